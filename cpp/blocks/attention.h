// Grouped-query attention.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "blocks/block.h"

namespace dllama {

// Grouped-query attention: q/k/v projections (optional biases, optional per-head q/k RMSNorm), RoPE on
// the first rope_dim dims of each head, causal softmax attention over the cache, output projection.
// A node takes a contiguous share of the query heads and the KV heads they read (KV heads are
// replicated when there are more nodes than KV heads).
class Attention : public AttentionBlock {
public:
    struct Options {
        bool bias = false;     // "<prefix>q_bias", "k_bias", "v_bias"
        bool qk_norm = false;  // per-head RMSNorm weights "<prefix>q_norm", "k_norm"
    };
    Attention(const WeightSource& weights, const std::string& prefix, const ModelConfig& cfg, Options options,
              const Partition& part, const RopeTable& rope);

    // Keys (in position blocks, for scores) and values (in rows, for weighted sums) of the local KV heads.
    std::vector<KvShape> cache_shapes() const override {
        return {{n_kv_, head_dim_, KvLayout::PositionBlocks}, {n_kv_, head_dim_, KvLayout::Rows}};
    }
    void forward(BlockContext& ctx, const float* xn, KvCache::Layer& cache, float* out) override;
    size_t weight_bytes() const override { return wqkv_.bytes() + wq_.bytes() + wkv_.bytes() + wo_.bytes(); }
    BlockOutput output() const override { return output_; }

private:
    int n_q_, n_kv_, kv_first_, group_, head_dim_, q_first_;  // local heads; first global q/kv head
    int64_t dim_;
    float eps_;
    Options options_;
    BlockOutput output_;
    const RopeTable& rope_;
    Matrix wqkv_, wo_;  // q, k and v rows stacked: one product gives [q | k | v] per token
    Matrix wq_, wkv_;   // instead, when q is stored in another type than k and v (Q40 files keep k, v at Q80)
    std::vector<float> q_bias_, k_bias_, v_bias_, q_norm_, k_norm_;
    std::vector<float> qkv_, att_, q_, kv_;  // per chunk
    Activations in_, att_in_;
};

}  // namespace dllama
