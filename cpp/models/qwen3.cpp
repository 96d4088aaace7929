// Qwen3: the Llama graph with a per-head RMSNorm on q and k before RoPE.
#include "models/builders.h"
#include "models/llama.h"

namespace dllama {

std::unique_ptr<Model> build_qwen3(const ModelConfig& cfg, std::shared_ptr<TensorStore> store, int n_threads) {
    return std::make_unique<LlamaModel>(cfg, std::move(store), n_threads, Attention::Options{cfg.attention_bias, true});
}

}  // namespace dllama
