// Layer building blocks the per-architecture graphs compose: grouped-query attention with its KV
// cache, and the SwiGLU feed-forward. Weights are looked up as "<prefix><name>" in the TensorStore.
#pragma once
#include <string>
#include <vector>

#include "model.h"

namespace dllama {

// Everything a block needs from its model while running.
struct BlockContext {
    const ModelConfig& cfg;
    ThreadPool& pool;
    Scratch& scratch;
};

// Grouped-query attention: q/k/v projections (optional biases, optional per-head q/k RMSNorm), RoPE on
// the first rope_dim dims of each head, causal softmax attention over the cache, output projection.
class Attention {
public:
    struct Options {
        bool bias = false;     // q/k/v biases "<prefix>q_bias" ...
        bool qk_norm = false;  // per-head RMSNorm weights "<prefix>q_norm", "<prefix>k_norm"
    };
    Attention(const TensorStore& store, const std::string& prefix, const ModelConfig& cfg, Options options);

    // xn: n x dim (normed input) at positions pos..pos+n-1; out: n x dim.
    void forward(BlockContext& ctx, const RopeTable& rope, const float* xn, int n, int pos, float* out);

    size_t weight_bytes() const { return wq_.bytes() + wk_.bytes() + wv_.bytes() + wo_.bytes(); }
    size_t kv_bytes_per_position() const { return 2 * sizeof(float) * (size_t)n_kv_heads_ * head_dim_; }
    size_t kv_cache_bytes() const { return (k_cache_.size() + v_cache_.size()) * sizeof(float); }

private:
    int n_heads_, n_kv_heads_, head_dim_, seq_len_;
    float eps_;
    Options options_;
    Matrix wq_, wk_, wv_, wo_;
    std::vector<float> q_bias_, k_bias_, v_bias_, q_norm_, k_norm_;
    std::vector<float> k_cache_, v_cache_;  // [seq_len][n_kv_heads * head_dim]
    std::vector<float> q_, k_, v_, att_;    // per chunk
    Activations in_, att_in_;
};

// SwiGLU: down(silu(gate(x)) * up(x)), weights "<prefix>gate", "<prefix>up", "<prefix>down".
class FeedForward {
public:
    FeedForward(const TensorStore& store, const std::string& prefix);
    void forward(BlockContext& ctx, const float* xn, int n, float* out);
    size_t weight_bytes() const { return gate_.bytes() + up_.bytes() + down_.bytes(); }

private:
    Matrix gate_, up_, down_;
    std::vector<float> g_, u_;
    Activations in_, mid_;
};

// Applies rms_norm to each of n rows of width dim (in parallel for prefill chunks).
void rms_norm_rows(ThreadPool& pool, const float* x, const float* w, int n, int dim, float eps, float* out);
// x += y over n rows of width dim.
void add_rows(float* x, const float* y, int n, int dim);

}  // namespace dllama
