#include "blocks/latent_attention.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace dllama {

LatentAttention::LatentAttention(const WeightSource& weights, const std::string& prefix, const ModelConfig& cfg,
                                 const Partition& part, const RopeTable& rope)
    : kv_lora_(cfg.kv_lora_rank), nope_(cfg.qk_nope_dim), rope_dim_(cfg.qk_rope_dim), v_dim_(cfg.v_head_dim),
      q_lora_(cfg.q_lora_rank), latent_eps_(cfg.latent_norm_eps),
      scale_(cfg.attention_scale > 0 ? cfg.attention_scale : 1.0f / std::sqrt((float)(cfg.qk_nope_dim + cfg.qk_rope_dim))),
      rope_(rope) {
    const Range heads = UnitSplit::of(weights, prefix + "o", cfg.n_heads, "heads").share(part);
    n_heads_ = (int)heads.size();
    output_ = heads.size() < cfg.n_heads ? BlockOutput::PartialSum : BlockOutput::Complete;
    const int qk = nope_ + rope_dim_;
    const Range dim = Range::all(cfg.dim);
    const Range q_rows{heads.begin * qk, heads.end * qk};
    const Range q_lora = Range::all(q_lora_), kv_lora = Range::all(kv_lora_), kv_a = Range::all(kv_lora_ + rope_dim_);
    if (q_lora_ > 0) {
        wq_a_ = weights.matrix(prefix + "q_a", q_lora, dim);
        q_a_norm_ = weights.vector(prefix + "q_a_norm", q_lora);
        wq_b_ = weights.matrix(prefix + "q_b", q_rows, q_lora);
        if (weights.has(prefix + "q_a_bias")) q_a_bias_ = weights.vector(prefix + "q_a_bias", q_lora);
    } else {
        wq_ = weights.matrix(prefix + "q", q_rows, dim);
    }
    wkv_a_ = weights.matrix(prefix + "kv_a", kv_a, dim);
    kv_a_norm_ = weights.vector(prefix + "kv_a_norm", kv_lora);
    if (weights.has(prefix + "kv_a_bias")) kv_a_bias_ = weights.vector(prefix + "kv_a_bias", kv_a);
    for (int64_t h = heads.begin; h < heads.end; h++) {
        k_b_.push_back(weights.matrix(prefix + "k_b", Range{h * kv_lora_, (h + 1) * kv_lora_}, Range::all(nope_)));
        v_b_.push_back(weights.matrix(prefix + "v_b", Range{h * v_dim_, (h + 1) * v_dim_}, Range::all(kv_lora_)));
    }
    wo_ = weights.matrix(prefix + "o", dim, Range{heads.begin * v_dim_, heads.end * v_dim_});
    // A bias after the head-split output projection is added once, by node 0, before the sum.
    if (cfg.attention_out_bias && part.node == 0) o_bias_ = weights.vector(prefix + "o_bias", dim);
}

size_t LatentAttention::weight_bytes() const {
    size_t total = wq_.bytes() + wq_a_.bytes() + wq_b_.bytes() + wkv_a_.bytes() + wo_.bytes();
    for (size_t h = 0; h < k_b_.size(); h++) total += k_b_[h].bytes() + v_b_[h].bytes();
    return total;
}

void LatentAttention::forward(BlockContext& ctx, const float* xn, KvCache::Layer& cache, float* out) {
    const Batch& batch = ctx.batch;
    const int n = batch.n;
    KvTensor &latents = cache[0], &rope_keys = cache[1];
    const int dim = ctx.cfg.dim, qk = nope_ + rope_dim_, kv_width = kv_lora_ + rope_dim_;
    const int q_width = n_heads_ * qk;
    ensure_size(q_, (size_t)n * q_width);
    ensure_size(kv_, (size_t)n * kv_width);
    in_.set(xn, n, dim);
    if (q_lora_ > 0) {
        ensure_size(qa_, (size_t)n * q_lora_);
        matmul(wq_a_, in_, qa_.data(), ctx.pool);
        for (int t = 0; t < n; t++) {
            float* a = &qa_[(size_t)t * q_lora_];
            if (!q_a_bias_.empty()) add(a, q_a_bias_.data(), q_lora_);
            rms_norm(a, q_a_norm_.data(), q_lora_, latent_eps_, a);
        }
        qa_in_.set(qa_.data(), n, q_lora_);
        matmul(wq_b_, qa_in_, q_.data(), ctx.pool);
    } else {
        matmul(wq_, in_, q_.data(), ctx.pool);
    }
    matmul(wkv_a_, in_, kv_.data(), ctx.pool);

    // Cache each token's normed latent and rotated shared key; rotate the queries' rope parts.
    ensure_size(latent_, kv_lora_);
    for (int t = 0; t < n; t++) {
        float* kv = &kv_[(size_t)t * kv_width];
        if (!kv_a_bias_.empty()) add(kv, kv_a_bias_.data(), kv_width);
        const StepRow& row = batch[t];
        rms_norm(kv, kv_a_norm_.data(), kv_lora_, latent_eps_, latent_.data());
        latents.put(row.slot, row.pos, latent_.data());
        rope_.apply(kv + kv_lora_, 1, rope_dim_, row.pos);
        rope_keys.put(row.slot, row.pos, kv + kv_lora_);
        for (int h = 0; h < n_heads_; h++) rope_.apply(&q_[(size_t)t * q_width + h * qk + nope_], 1, rope_dim_, row.pos);
    }

    // Absorb: each head's no-RoPE query into latent space, q_lat = k_b(h) . q_nope.
    ensure_size(head_in_, (size_t)n * std::max(nope_, kv_lora_));
    ensure_size(head_out_, (size_t)n * std::max(kv_lora_, v_dim_));
    ensure_size(q_lat_, (size_t)n * n_heads_ * kv_lora_);
    for (int h = 0; h < n_heads_; h++) {
        for (int t = 0; t < n; t++) {
            const float* src = &q_[(size_t)t * q_width + h * qk];
            std::copy(src, src + nope_, &head_in_[(size_t)t * nope_]);
        }
        head_act_.set(head_in_.data(), n, nope_);
        matmul(k_b_[h], head_act_, head_out_.data(), ctx.pool);
        for (int t = 0; t < n; t++)
            std::copy(&head_out_[(size_t)t * kv_lora_], &head_out_[(size_t)(t + 1) * kv_lora_],
                      &q_lat_[((size_t)t * n_heads_ + h) * kv_lora_]);
    }

    // Scores against cached latents and rope keys, then the weighted sum of latents, for runs of heads
    // (every head reads the one shared latent cache, so a run reads it once); runs are as long as
    // giving every thread work allows.
    ensure_size(lat_, (size_t)n * n_heads_ * kv_lora_);
    const int run = std::max(1, n_heads_ * n / (2 * ctx.pool.size()));
    const int runs_per_token = (n_heads_ + run - 1) / run;
    const int seq_len = ctx.cfg.seq_len;
    if ((int)scores_.size() != ctx.pool.size()) scores_.assign(ctx.pool.size(), {});
    ctx.pool.parallel_for((size_t)n * runs_per_token, 1, [&](size_t i0, size_t i1, int thread) {
        std::vector<float>& sc = scores_[thread];
        ensure_size(sc, (size_t)2 * std::min(run, n_heads_) * seq_len);
        for (size_t i = i0; i < i1; i++) {
            const int t = (int)(i / runs_per_token), h0 = (int)(i % runs_per_token) * run;
            const StepRow& row = batch[t];
            const int heads = std::min(run, n_heads_ - h0), n_ctx = row.pos + 1;
            float* latent_scores = sc.data();
            float* rope_scores = sc.data() + (size_t)heads * seq_len;
            const KvHistory history = latents.head(row.slot, 0);
            attention_scores(history, n_ctx, &q_lat_[((size_t)t * n_heads_ + h0) * kv_lora_], kv_lora_, heads,
                             latent_scores, seq_len);
            attention_scores(rope_keys.head(row.slot, 0), n_ctx, &q_[(size_t)t * q_width + h0 * qk + nope_], qk, heads,
                             rope_scores, seq_len);
            for (int h = 0; h < heads; h++) {
                float* s = latent_scores + (size_t)h * seq_len;
                const float* r = rope_scores + (size_t)h * seq_len;
                for (int j = 0; j < n_ctx; j++) s[j] = (s[j] + r[j]) * scale_;
                softmax(s, n_ctx);
            }
            attention_weighted_sum(history, n_ctx, latent_scores, seq_len, heads,
                                   &lat_[((size_t)t * n_heads_ + h0) * kv_lora_], kv_lora_);
        }
    });

    // Each head's value: v_b(h) . latent sum; then the output projection.
    ensure_size(att_, (size_t)n * n_heads_ * v_dim_);
    for (int h = 0; h < n_heads_; h++) {
        for (int t = 0; t < n; t++)
            std::copy(&lat_[((size_t)t * n_heads_ + h) * kv_lora_], &lat_[((size_t)t * n_heads_ + h + 1) * kv_lora_],
                      &head_in_[(size_t)t * kv_lora_]);
        head_act_.set(head_in_.data(), n, kv_lora_);
        matmul(v_b_[h], head_act_, head_out_.data(), ctx.pool);
        for (int t = 0; t < n; t++)
            std::copy(&head_out_[(size_t)t * v_dim_], &head_out_[(size_t)(t + 1) * v_dim_],
                      &att_[(size_t)t * n_heads_ * v_dim_ + h * v_dim_]);
    }
    att_in_.set(att_.data(), n, n_heads_ * v_dim_);
    matmul(wo_, att_in_, out, ctx.pool);
    if (!o_bias_.empty())
        for (int t = 0; t < n; t++) add(out + (size_t)t * dim, o_bias_.data(), dim);
}

}  // namespace dllama
