// Multi-head latent attention (MLA).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "blocks/block.h"

namespace dllama {

// Multi-head latent attention (DeepSeek-V2 style, GLM-4.7-Flash). The cache keeps per token only the
// normed kv latent (kv_lora_rank values) and the shared RoPE key (qk_rope_dim values). Attention runs in
// the "absorbed" form: each head's query is mapped into latent space by its k_b block, scored against
// the cached latents directly, and the latent-weighted sum is mapped to the head's value by v_b; full
// keys and values are never rebuilt. The latent projections are replicated; heads are split across nodes.
// Weights: "<prefix>q" or "<prefix>q_a", "q_a_norm", "q_b"; "kv_a", "kv_a_norm"; "k_b" [heads*kv_lora x
// nope] (each head's k block transposed); "v_b" [heads*v x kv_lora]; "o"; optional "q_a_bias",
// "kv_a_bias", "o_bias".
class LatentAttention : public AttentionBlock {
public:
    LatentAttention(const WeightSource& weights, const std::string& prefix, const ModelConfig& cfg,
                    const Partition& part, const RopeTable& rope);
    // One head of kv_lora normed latents and one of rope_dim rotated keys, both in position blocks.
    std::vector<KvShape> cache_shapes() const override {
        return {{1, kv_lora_, KvLayout::PositionBlocks}, {1, rope_dim_, KvLayout::PositionBlocks}};
    }
    void forward(BlockContext& ctx, const float* xn, KvCache::Layer& cache, float* out) override;
    size_t weight_bytes() const override;
    BlockOutput output() const override { return output_; }

private:
    int n_heads_, kv_lora_, nope_, rope_dim_, v_dim_, q_lora_;
    float latent_eps_, scale_;
    BlockOutput output_;
    const RopeTable& rope_;
    Matrix wq_, wq_a_, wq_b_, wkv_a_, wo_;
    std::vector<Matrix> k_b_, v_b_;  // per local head
    std::vector<float> q_a_bias_, q_a_norm_, kv_a_bias_, kv_a_norm_, o_bias_;
    std::vector<std::vector<float>> scores_;  // per thread: [heads of a task][2][seq_len]
    std::vector<float> qa_, q_, kv_, latent_, head_in_, head_out_, q_lat_, lat_, att_;
    Activations in_, qa_in_, head_act_, att_in_;
};

}  // namespace dllama
