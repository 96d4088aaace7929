// Qwen3: the dense decoder with a per-head RMSNorm on q and k before RoPE (rotating head halves).
#include "models/builders.h"
#include "models/dense_decoder.h"

namespace dllama {

std::unique_ptr<Model> build_qwen3(const ModelConfig& cfg, std::shared_ptr<TensorStore> store, int n_threads) {
    DenseDecoderOptions options;
    options.attention.bias = cfg.attention_bias;
    options.attention.qk_norm = true;
    return std::make_unique<DenseDecoder>(cfg, std::move(store), n_threads, options);
}

}  // namespace dllama
