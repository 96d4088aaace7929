// Llama-style decoder: pre-norm attention and SwiGLU blocks. Qwen3 is the same graph with q/k norms.
#pragma once
#include "blocks.h"

namespace dllama {

class LlamaModel : public Model {
public:
    LlamaModel(const ModelConfig& cfg, std::shared_ptr<TensorStore> store, int n_threads, Attention::Options attention);

protected:
    void run_layers(float* x, int n, int pos) override;
    size_t kv_bytes_per_position() const override;
    size_t layer_weight_bytes_per_token() const override;

private:
    struct Layer {
        std::vector<float> attn_norm, ffn_norm;
        Attention attention;
        FeedForward ffn;
    };
    std::vector<Layer> layers_;
    RopeTable rope_;
};

}  // namespace dllama
