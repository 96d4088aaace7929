// GLM-4 (glm-4-9b-chat: HF `glm` and the legacy `chatglm` layout): the dense decoder with q/k/v biases
// and RoPE on the first half of each head, rotating interleaved pairs.
#include "models/builders.h"
#include "models/dense_decoder.h"

namespace dllama {

std::unique_ptr<Model> build_glm(const ModelConfig& cfg, std::shared_ptr<TensorStore> store, int n_threads) {
    DenseDecoderOptions options;
    options.attention.bias = cfg.attention_bias;
    return std::make_unique<DenseDecoder>(cfg, std::move(store), n_threads, options);
}

}  // namespace dllama
