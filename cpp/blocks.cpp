#include "blocks.h"

#include <cmath>
#include <stdexcept>

namespace dllama {

void rms_norm_rows(ThreadPool& pool, const float* x, const float* w, int n, int dim, float eps, float* out) {
    auto rows = [&](size_t t0, size_t t1, int) {
        for (size_t t = t0; t < t1; t++) rms_norm(x + t * dim, w, dim, eps, out + t * dim);
    };
    if (n == 1) rows(0, 1, 0);
    else pool.parallel_for(n, 1, rows);
}

void add_rows(float* x, const float* y, int n, int dim) { add(x, y, n * dim); }

static void ensure_size(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

Attention::Attention(const TensorStore& store, const std::string& prefix, const ModelConfig& cfg, Options options)
    : n_heads_(cfg.n_heads), n_kv_heads_(cfg.n_kv_heads), head_dim_(cfg.head_dim), seq_len_(cfg.seq_len),
      eps_(cfg.norm_eps), options_(options) {
    wq_ = store.matrix(prefix + "q");
    wk_ = store.matrix(prefix + "k");
    wv_ = store.matrix(prefix + "v");
    wo_ = store.matrix(prefix + "o");
    if (options.bias) {
        q_bias_ = store.vector(prefix + "q_bias");
        k_bias_ = store.vector(prefix + "k_bias");
        v_bias_ = store.vector(prefix + "v_bias");
    }
    if (options.qk_norm) {
        q_norm_ = store.vector(prefix + "q_norm");
        k_norm_ = store.vector(prefix + "k_norm");
    }
    const size_t kv_dim = (size_t)n_kv_heads_ * head_dim_;
    k_cache_.assign((size_t)seq_len_ * kv_dim, 0.0f);
    v_cache_.assign((size_t)seq_len_ * kv_dim, 0.0f);
}

void Attention::forward(BlockContext& ctx, const RopeTable& rope, const float* xn, int n, int pos, float* out) {
    const int dim = ctx.cfg.dim;
    const int q_dim = n_heads_ * head_dim_, kv_dim = n_kv_heads_ * head_dim_;
    ensure_size(q_, (size_t)n * q_dim);
    ensure_size(k_, (size_t)n * kv_dim);
    ensure_size(v_, (size_t)n * kv_dim);
    ensure_size(att_, (size_t)n * q_dim);

    in_.set(xn, n, dim);
    matmul(wq_, in_, q_.data(), ctx.pool);
    matmul(wk_, in_, k_.data(), ctx.pool);
    matmul(wv_, in_, v_.data(), ctx.pool);

    ctx.pool.parallel_for(n, 1, [&](size_t t0, size_t t1, int) {
        for (size_t t = t0; t < t1; t++) {
            float* q = &q_[t * q_dim];
            float* k = &k_[t * kv_dim];
            float* v = &v_[t * kv_dim];
            if (options_.bias) {
                add(q, q_bias_.data(), q_dim);
                add(k, k_bias_.data(), kv_dim);
                add(v, v_bias_.data(), kv_dim);
            }
            if (options_.qk_norm) {
                for (int h = 0; h < n_heads_; h++) rms_norm(q + h * head_dim_, q_norm_.data(), head_dim_, eps_, q + h * head_dim_);
                for (int h = 0; h < n_kv_heads_; h++) rms_norm(k + h * head_dim_, k_norm_.data(), head_dim_, eps_, k + h * head_dim_);
            }
            rope.apply(q, n_heads_, head_dim_, pos + (int)t);
            rope.apply(k, n_kv_heads_, head_dim_, pos + (int)t);
            std::copy(k, k + kv_dim, &k_cache_[(size_t)(pos + t) * kv_dim]);
            std::copy(v, v + kv_dim, &v_cache_[(size_t)(pos + t) * kv_dim]);
        }
    });

    const int group = n_heads_ / n_kv_heads_;
    const float scale = 1.0f / std::sqrt((float)head_dim_);
    ctx.pool.parallel_for((size_t)n * n_heads_, 1, [&](size_t i0, size_t i1, int thread) {
        std::vector<float>& scores = ctx.scratch.per_thread[thread];
        for (size_t i = i0; i < i1; i++) {
            const int t = (int)(i / n_heads_), h = (int)(i % n_heads_);
            const int kvh = h / group;
            const int n_ctx = pos + t + 1;
            const float* q = &q_[(size_t)t * q_dim + (size_t)h * head_dim_];
            for (int s = 0; s < n_ctx; s++) {
                const float* k = &k_cache_[(size_t)s * kv_dim + (size_t)kvh * head_dim_];
                float dot = 0.0f;
                for (int d = 0; d < head_dim_; d++) dot += q[d] * k[d];
                scores[s] = dot * scale;
            }
            softmax(scores.data(), n_ctx);
            float* o = &att_[(size_t)t * q_dim + (size_t)h * head_dim_];
            std::fill(o, o + head_dim_, 0.0f);
            for (int s = 0; s < n_ctx; s++) {
                const float* v = &v_cache_[(size_t)s * kv_dim + (size_t)kvh * head_dim_];
                const float p = scores[s];
                for (int d = 0; d < head_dim_; d++) o[d] += p * v[d];
            }
        }
    });

    att_in_.set(att_.data(), n, q_dim);
    matmul(wo_, att_in_, out, ctx.pool);
}

FeedForward::FeedForward(const TensorStore& store, const std::string& prefix)
    : gate_(store.matrix(prefix + "gate")), up_(store.matrix(prefix + "up")), down_(store.matrix(prefix + "down")) {}

void FeedForward::forward(BlockContext& ctx, const float* xn, int n, float* out) {
    const int hidden = (int)gate_.rows();
    ensure_size(g_, (size_t)n * hidden);
    ensure_size(u_, (size_t)n * hidden);
    in_.set(xn, n, gate_.cols());
    matmul(gate_, in_, g_.data(), ctx.pool);
    matmul(up_, in_, u_.data(), ctx.pool);
    ctx.pool.parallel_for((size_t)n * hidden, 256, [&](size_t i0, size_t i1, int) {
        silu_mul(&g_[i0], &u_[i0], (int)(i1 - i0));
    });
    mid_.set(g_.data(), n, hidden);
    matmul(down_, mid_, out, ctx.pool);
}

}  // namespace dllama
