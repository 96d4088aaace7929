// The graph builders, one per architecture file; the Python architecture table names them.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model.h"

namespace dllama {

using BuildFn = std::unique_ptr<Model> (*)(const ModelConfig&, std::shared_ptr<TensorStore>, int n_threads);
struct GraphBuilder {
    std::string name;
    BuildFn build;
};

std::unique_ptr<Model> build_llama(const ModelConfig&, std::shared_ptr<TensorStore>, int n_threads);
std::unique_ptr<Model> build_qwen3(const ModelConfig&, std::shared_ptr<TensorStore>, int n_threads);
std::unique_ptr<Model> build_glm(const ModelConfig&, std::shared_ptr<TensorStore>, int n_threads);
std::unique_ptr<Model> build_glm4(const ModelConfig&, std::shared_ptr<TensorStore>, int n_threads);

inline const std::vector<GraphBuilder>& graph_builders() {
    static const std::vector<GraphBuilder> builders = {
        {"llama", build_llama},
        {"qwen3", build_qwen3},
        {"glm", build_glm},
        {"glm4", build_glm4},
    };
    return builders;
}

}  // namespace dllama
