#include "blocks/attention.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace dllama {

Attention::Attention(const WeightSource& weights, const std::string& prefix, const ModelConfig& cfg, Options options,
                     const Partition& part, const RopeTable& rope)
    : group_(cfg.n_heads / cfg.n_kv_heads), head_dim_(cfg.head_dim), dim_(cfg.dim), eps_(cfg.norm_eps), options_(options),
      rope_(rope) {
    const Range q = UnitSplit::of(weights, prefix + "o", cfg.n_heads, "heads").share(part);
    output_ = q.size() < cfg.n_heads ? BlockOutput::PartialSum : BlockOutput::Complete;
    q_first_ = (int)q.begin;
    n_q_ = (int)q.size();
    kv_first_ = (int)q.begin / group_;
    n_kv_ = (int)(q.end - 1) / group_ + 1 - kv_first_;
    const Range q_rows{q.begin * head_dim_, q.end * head_dim_};
    const Range kv_rows{(int64_t)kv_first_ * head_dim_, (int64_t)(kv_first_ + n_kv_) * head_dim_};
    const Range dim = Range::all(cfg.dim);
    if (weights.info(prefix + "q").type == weights.info(prefix + "k").type) {
        wqkv_ = weights.stacked({{prefix + "q", q_rows}, {prefix + "k", kv_rows}, {prefix + "v", kv_rows}}, dim);
    } else {
        wq_ = weights.matrix(prefix + "q", q_rows, dim);
        wkv_ = weights.stacked({{prefix + "k", kv_rows}, {prefix + "v", kv_rows}}, dim);
    }
    wo_ = weights.matrix(prefix + "o", dim, q_rows);
    if (options.bias) {
        q_bias_ = weights.vector(prefix + "q_bias", q_rows);
        k_bias_ = weights.vector(prefix + "k_bias", kv_rows);
        v_bias_ = weights.vector(prefix + "v_bias", kv_rows);
    }
    if (options.qk_norm) {
        q_norm_ = weights.vector(prefix + "q_norm", Range::all(head_dim_));
        k_norm_ = weights.vector(prefix + "k_norm", Range::all(head_dim_));
    }
}

void Attention::forward(BlockContext& ctx, const float* xn, KvCache::Layer& cache, float* out) {
    const Batch& batch = ctx.batch;
    const int n = batch.n;
    KvTensor &keys = cache[0], &values = cache[1];
    const int q_dim = n_q_ * head_dim_, kv_dim = n_kv_ * head_dim_, qkv_dim = q_dim + 2 * kv_dim;
    ensure_size(qkv_, (size_t)n * qkv_dim);
    ensure_size(att_, (size_t)n * q_dim);

    in_.set(xn, n, dim_);
    if (!wqkv_.empty()) {
        matmul(wqkv_, in_, qkv_.data(), ctx.pool);
    } else {  // two products, then [q | k | v] per token as the stacked product gives it
        ensure_size(q_, (size_t)n * q_dim);
        ensure_size(kv_, (size_t)n * 2 * kv_dim);
        matmul(wq_, in_, q_.data(), ctx.pool);
        matmul(wkv_, in_, kv_.data(), ctx.pool);
        for (int t = 0; t < n; t++) {
            std::copy_n(&q_[(size_t)t * q_dim], q_dim, &qkv_[(size_t)t * qkv_dim]);
            std::copy_n(&kv_[(size_t)t * 2 * kv_dim], 2 * kv_dim, &qkv_[(size_t)t * qkv_dim + q_dim]);
        }
    }

    ctx.pool.parallel_for(n, 1, [&](size_t t0, size_t t1, int) {
        for (size_t t = t0; t < t1; t++) {
            float* q = &qkv_[t * qkv_dim];
            float* k = q + q_dim;
            float* v = k + kv_dim;
            if (options_.bias) {
                add(q, q_bias_.data(), q_dim);
                add(k, k_bias_.data(), kv_dim);
                add(v, v_bias_.data(), kv_dim);
            }
            if (options_.qk_norm) {
                for (int h = 0; h < n_q_; h++) rms_norm(q + h * head_dim_, q_norm_.data(), head_dim_, eps_, q + h * head_dim_);
                for (int h = 0; h < n_kv_; h++) rms_norm(k + h * head_dim_, k_norm_.data(), head_dim_, eps_, k + h * head_dim_);
            }
            const StepRow& row = batch[(int)t];
            rope_.apply(q, n_q_, head_dim_, row.pos);
            rope_.apply(k, n_kv_, head_dim_, row.pos);
            keys.put(row.slot, row.pos, k);
            values.put(row.slot, row.pos, v);
        }
    });

    // Every row's keys and values are in the cache before any row attends: a prompt's rows see each other.
    // Work items are (row, run of query heads sharing one KV head): each cached key and value row is
    // read once per run, not once per query head. Runs are split only as far as needed to give every
    // thread work (decode with few local KV heads).
    std::vector<std::pair<int, int>> runs;  // [first, last) local query heads
    const int pieces = std::max(1, std::min(group_, (2 * ctx.pool.size() + n * n_kv_ - 1) / (n * n_kv_)));
    for (int h = 0; h < n_q_;) {
        const int kv_end = std::min(n_q_, ((q_first_ + h) / group_ + 1) * group_ - q_first_);  // end of this KV head's run
        const int step = std::max(1, (kv_end - h + pieces - 1) / pieces);
        while (h < kv_end) {
            const int end = std::min(kv_end, h + step);  // the last run of a KV head may be shorter
            runs.push_back({h, end});
            h = end;
        }
    }
    const float scale = 1.0f / std::sqrt((float)head_dim_);
    ctx.pool.parallel_for((size_t)n * runs.size(), 1, [&](size_t i0, size_t i1, int thread) {
        std::vector<float>& scratch = ctx.scratch.per_thread[thread];
        for (size_t i = i0; i < i1; i++) {
            const int t = (int)(i / runs.size());
            const auto [first, last] = runs[i % runs.size()];
            const int kvh = (q_first_ + first) / group_ - kv_first_;
            const StepRow& row = batch[t];
            const int n_ctx = row.pos + 1;
            const float* q = &qkv_[(size_t)t * qkv_dim];
            float* o = &att_[(size_t)t * q_dim];
            const int heads = last - first;
            attention_scores(keys.head(row.slot, kvh), n_ctx, q + first * head_dim_, head_dim_, heads, scratch.data(), n_ctx);
            for (int h = 0; h < heads; h++) {
                float* sc = &scratch[(size_t)h * n_ctx];
                for (int s = 0; s < n_ctx; s++) sc[s] *= scale;
                softmax(sc, n_ctx);
            }
            attention_weighted_sum(values.head(row.slot, kvh), n_ctx, scratch.data(), n_ctx, heads, o + first * head_dim_,
                                   head_dim_);
        }
    });

    att_in_.set(att_.data(), n, q_dim);
    matmul(wo_, att_in_, out, ctx.pool);
}

}  // namespace dllama
