// The graph builders, one file per architecture; the Python architecture table names them.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model.h"

namespace dllama {

using BuildFn = std::unique_ptr<Model> (*)(const ModelConfig&, std::shared_ptr<const WeightSource>, int n_threads,
                                          Partition, std::shared_ptr<Collective>);
struct GraphBuilder {
    std::string name;
    BuildFn build;
};

#define DLLAMA_BUILDER(fn)                                                                                        \
    std::unique_ptr<Model> fn(const ModelConfig& cfg, std::shared_ptr<const WeightSource> weights, int n_threads, \
                              Partition part, std::shared_ptr<Collective> collective)
DLLAMA_BUILDER(build_llama);
DLLAMA_BUILDER(build_qwen3);
DLLAMA_BUILDER(build_qwen3_moe);
DLLAMA_BUILDER(build_glm);
DLLAMA_BUILDER(build_glm4);
DLLAMA_BUILDER(build_glm4_moe);
DLLAMA_BUILDER(build_glm4_moe_lite);

inline const std::vector<GraphBuilder>& graph_builders() {
    static const std::vector<GraphBuilder> builders = {
        {"llama", build_llama}, {"qwen3", build_qwen3}, {"qwen3_moe", build_qwen3_moe},
        {"glm", build_glm},     {"glm4", build_glm4},   {"glm4_moe", build_glm4_moe},
        {"glm4_moe_lite", build_glm4_moe_lite},
    };
    return builders;
}

}  // namespace dllama
