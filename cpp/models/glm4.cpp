// GLM-4-0414 / GLM-Z1 (HF `glm4`): GLM's graph plus "sandwich" norms on each block's output.
#include "models/builders.h"
#include "models/dense_decoder.h"

namespace dllama {

std::unique_ptr<Model> build_glm4(const ModelConfig& cfg, std::shared_ptr<TensorStore> store, int n_threads) {
    DenseDecoderOptions options;
    options.attention.bias = cfg.attention_bias;
    options.sandwich_norms = true;
    return std::make_unique<DenseDecoder>(cfg, std::move(store), n_threads, options);
}

}  // namespace dllama
