// The dense decoder shared by Llama, Qwen3, GLM and GLM-4: pre-norm attention and SwiGLU blocks with a
// residual stream; options cover what the architectures add (biases, q/k norms, sandwich norms).
#pragma once
#include "blocks.h"

namespace dllama {

struct DenseDecoderOptions {
    Attention::Options attention;
    // GLM-4's extra RMSNorms on each block's output before the residual add:
    // "layers.N.post_attn_norm" and "layers.N.post_ffn_norm".
    bool sandwich_norms = false;
};

class DenseDecoder : public Model {
public:
    DenseDecoder(const ModelConfig& cfg, std::shared_ptr<TensorStore> store, int n_threads, DenseDecoderOptions options);

protected:
    void run_layers(float* x, int n, int pos) override;
    size_t kv_bytes_per_position() const override;
    size_t layer_weight_bytes_per_token() const override;

private:
    struct Layer {
        std::vector<float> attn_norm, ffn_norm, post_attn_norm, post_ffn_norm;
        Attention attention;
        FeedForward ffn;
    };
    std::vector<Layer> layers_;
    RopeTable rope_;
};

}  // namespace dllama
