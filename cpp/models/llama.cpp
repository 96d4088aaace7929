// Llama (and Mistral): the dense decoder; q/k stored permuted for interleaved RoPE, as in distributed-llama.
#include "models/builders.h"
#include "models/dense_decoder.h"

namespace dllama {

std::unique_ptr<Model> build_llama(const ModelConfig& cfg, std::shared_ptr<TensorStore> store, int n_threads) {
    DenseDecoderOptions options;
    options.attention.bias = cfg.attention_bias;
    return std::make_unique<DenseDecoder>(cfg, std::move(store), n_threads, options);
}

}  // namespace dllama
