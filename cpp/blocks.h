// Layer building blocks the per-architecture graphs compose. Each block reads its weights as
// "<prefix><name>" from a WeightSource, takes only its partition's share (attention heads, FFN rows,
// each expert's rows), and returns a partial output that the graph sums across nodes.
#pragma once
#include <memory>
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

// Cached keys/values (or latents) of n_heads heads, each head's rows contiguous ([head][position][width]),
// so that attention streams one head's history sequentially; f32, or f16 to halve memory and bandwidth.
class KvCache {
public:
    KvCache() = default;
    KvCache(int rows, int n_heads, int head_width, bool f16);
    void put(int row, const float* values);  // n_heads * head_width values of one position
    float dot(int head, int row, const float* q) const;
    void axpy(float* y, float a, int head, int row) const;
    // For n_q query heads (q_stride apart) reading this head: out[i * out_stride] = q_i . row.
    void dot_heads(int head, int row, const float* q, int q_stride, int n_q, float* out, int out_stride) const;
    // y_i += a[i * a_stride] * row for n_q outputs y_i (y_stride apart).
    void axpy_heads(float* y, int y_stride, const float* a, int a_stride, int n_q, int head, int row) const;
    size_t bytes_per_row() const { return (size_t)n_heads_ * width_ * (f16_ ? 2 : 4); }

private:
    size_t at(int head, int row) const { return ((size_t)head * rows_ + row) * width_; }
    int rows_ = 0, n_heads_ = 0, width_ = 0;
    bool f16_ = false;
    std::vector<float> f32_;
    std::vector<uint16_t> half_;
};

class AttentionBlock {
public:
    virtual ~AttentionBlock() = default;
    // xn: n x dim (normed input) at positions pos..pos+n-1; out: n x dim partial output.
    virtual void forward(BlockContext& ctx, const float* xn, int n, int pos, float* out) = 0;
    virtual size_t weight_bytes() const = 0;
    virtual size_t kv_bytes_per_position() const = 0;
};

class FeedForwardBlock {
public:
    virtual ~FeedForwardBlock() = default;
    virtual void forward(BlockContext& ctx, const float* xn, int n, float* out) = 0;
    virtual size_t weight_bytes_per_token() const = 0;
};

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

    void forward(BlockContext& ctx, const float* xn, int n, int pos, float* out) override;
    size_t weight_bytes() const override { return wq_.bytes() + wk_.bytes() + wv_.bytes() + wo_.bytes(); }
    size_t kv_bytes_per_position() const override { return k_cache_.bytes_per_row() + v_cache_.bytes_per_row(); }

private:
    int n_q_, n_kv_, kv_first_, group_, head_dim_, q_first_;  // local heads; first global q/kv head
    float eps_;
    Options options_;
    const RopeTable& rope_;
    Matrix wq_, wk_, wv_, wo_;
    std::vector<float> q_bias_, k_bias_, v_bias_, q_norm_, k_norm_;
    KvCache k_cache_, v_cache_;           // n_kv heads of head_dim
    std::vector<float> q_, k_, v_, att_;  // per chunk
    Activations in_, att_in_;
};

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
    KvCache latent_cache_, rope_cache_;  // one head of kv_lora, one of rope_dim
    std::vector<float> qa_, q_, kv_, latent_, head_in_, head_out_, q_lat_, lat_, att_;
    Activations in_, qa_in_, head_act_, att_in_;
};

// SwiGLU: down(silu(gate(x)) * up(x)), weights "<prefix>gate", "<prefix>up", "<prefix>down"; a node
// takes a share of the hidden rows (in whole 32-value blocks).
class FeedForward : public FeedForwardBlock {
public:
    FeedForward(const WeightSource& weights, const std::string& prefix, int dim, int hidden, const Partition& part);
    void forward(BlockContext& ctx, const float* xn, int n, float* out) override;
    size_t weight_bytes_per_token() const override { return gate_.bytes() + up_.bytes() + down_.bytes(); }

private:
    Matrix gate_, up_, down_;
    std::vector<float> g_, u_;
    Activations in_, mid_;
};

// Mixture of experts: a router picks n_active experts per token (weights "<prefix>router" [n_experts x
// dim] F32, optional "<prefix>router_bias"), each a SwiGLU "<prefix>experts.E.", plus optional shared
// experts "<prefix>shared." applied to every token. Decode reads only the chosen experts.
class MoeFeedForward : public FeedForwardBlock {
public:
    enum class Scoring { Softmax, Sigmoid };  // Qwen3-MoE; GLM-4.5 (DeepSeek-V3 "noaux_tc")
    MoeFeedForward(const WeightSource& weights, const std::string& prefix, const ModelConfig& cfg, Scoring scoring,
                   const Partition& part);
    void forward(BlockContext& ctx, const float* xn, int n, float* out) override;
    size_t weight_bytes_per_token() const override;

    // The experts and weights for one token's router logits (exposed for tests).
    void route(const float* logits, int* experts, float* weights) const;

private:
    Scoring scoring_;
    int n_experts_, n_active_, n_groups_, topk_groups_;
    bool norm_topk_;
    float scaling_;
    Matrix router_;
    std::vector<float> router_bias_;
    std::vector<std::unique_ptr<FeedForward>> experts_;
    std::unique_ptr<FeedForward> shared_;
    std::vector<float> logits_, gathered_, expert_out_;
    Activations router_in_;
};

// Applies rms_norm to each of n rows of width dim (in parallel for prefill chunks); out may alias x.
void rms_norm_rows(ThreadPool& pool, const float* x, const float* w, int n, int dim, float eps, float* out);

}  // namespace dllama
