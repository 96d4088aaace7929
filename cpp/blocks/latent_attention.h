// Multi-head latent attention (MLA).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "blocks/block.h"
#include "blocks/kv_cache.h"

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
    void forward(BlockContext& ctx, const float* xn, int n, int pos, float* out) override;
    size_t weight_bytes() const override;
    size_t kv_bytes_per_position() const override { return latent_cache_.bytes_per_row() + rope_cache_.bytes_per_row(); }

private:
    int n_heads_, kv_lora_, nope_, rope_dim_, v_dim_, q_lora_;
    float latent_eps_, scale_;
    const RopeTable& rope_;
    Matrix wq_, wq_a_, wq_b_, wkv_a_, wo_;
    std::vector<Matrix> k_b_, v_b_;  // per local head
    std::vector<float> q_a_bias_, q_a_norm_, kv_a_bias_, kv_a_norm_, o_bias_;
    KvCache latent_cache_, rope_cache_;  // one head of kv_lora, one of rope_dim (position blocks)
    std::vector<std::vector<float>> scores_;  // per thread: [heads of a task][2][seq_len]
    std::vector<float> qa_, q_, kv_, latent_, head_in_, head_out_, q_lat_, lat_, att_;
    Activations in_, qa_in_, head_act_, att_in_;
};

}  // namespace dllama
