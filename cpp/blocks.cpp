#include "blocks.h"

#include <algorithm>

#include "quants.h"
#include <cmath>
#include <numeric>
#include <stdexcept>

namespace dllama {

void rms_norm_rows(ThreadPool& pool, const float* x, const float* w, int n, int dim, float eps, float* out) {
    auto rows = [&](size_t t0, size_t t1, int) {
        for (size_t t = t0; t < t1; t++) rms_norm(x + t * dim, w, dim, eps, out + t * dim);
    };
    if (n == 1) rows(0, 1, 0);
    else pool.parallel_for(n, 1, rows);
}

static void ensure_size(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

static std::string split_error(const std::string& what, int64_t n, const Partition& part) {
    return "cannot split " + std::to_string(n) + " " + what + " across " + std::to_string(part.n_nodes) +
           " nodes: every node needs at least one";
}

// ---------------------------------------------------------------------------------------------
// KV cache

KvCache::KvCache(int rows, int n_heads, int head_width, bool f16)
    : rows_(rows), n_heads_(n_heads), width_(head_width), f16_(f16) {
    const size_t n = (size_t)rows * n_heads * head_width;
    if (f16) half_.assign(n, 0);
    else f32_.assign(n, 0.0f);
}

void KvCache::put(int row, const float* values) {
    for (int h = 0; h < n_heads_; h++) {
        const float* v = values + (size_t)h * width_;
        if (f16_)
            for (int i = 0; i < width_; i++) half_[at(h, row) + i] = f32_to_f16(v[i]);
        else
            std::copy(v, v + width_, &f32_[at(h, row)]);
    }
}

float KvCache::dot(int head, int row, const float* q) const {
    return f16_ ? dot_f16(q, &half_[at(head, row)], width_) : dllama::dot(q, &f32_[at(head, row)], width_);
}

void KvCache::axpy(float* y, float a, int head, int row) const {
    if (f16_) axpy_f16(y, a, &half_[at(head, row)], width_);
    else dllama::axpy(y, a, &f32_[at(head, row)], width_);
}

// A row converted from f16 once serves every query head of a group (at most kMaxRow values).
static constexpr int kMaxRow = 512;

void KvCache::dot_heads(int head, int row, const float* q, int q_stride, int n_q, float* out, int out_stride) const {
    if (f16_ && (n_q == 1 || width_ > kMaxRow)) {
        for (int i = 0; i < n_q; i++) out[i * out_stride] = dot(head, row, q + i * q_stride);
        return;
    }
    float buf[kMaxRow];
    const float* x = f16_ ? buf : &f32_[at(head, row)];
    if (f16_) f16_to_f32_row(&half_[at(head, row)], buf, width_);
    for (int i = 0; i < n_q; i++) out[i * out_stride] = dllama::dot(q + i * q_stride, x, width_);
}

void KvCache::axpy_heads(float* y, int y_stride, const float* a, int a_stride, int n_q, int head, int row) const {
    if (f16_ && (n_q == 1 || width_ > kMaxRow)) {
        for (int i = 0; i < n_q; i++) axpy(y + i * y_stride, a[i * a_stride], head, row);
        return;
    }
    float buf[kMaxRow];
    const float* x = f16_ ? buf : &f32_[at(head, row)];
    if (f16_) f16_to_f32_row(&half_[at(head, row)], buf, width_);
    for (int i = 0; i < n_q; i++) dllama::axpy(y + i * y_stride, a[i * a_stride], x, width_);
}

// ---------------------------------------------------------------------------------------------
// Attention

Attention::Attention(const WeightSource& weights, const std::string& prefix, const ModelConfig& cfg, Options options,
                     const Partition& part, const RopeTable& rope)
    : group_(cfg.n_heads / cfg.n_kv_heads), head_dim_(cfg.head_dim), eps_(cfg.norm_eps), options_(options), rope_(rope) {
    const Range q = part.share(cfg.n_heads);
    if (q.empty()) throw std::invalid_argument(split_error("attention heads", cfg.n_heads, part));
    q_first_ = (int)q.begin;
    n_q_ = (int)q.size();
    kv_first_ = (int)q.begin / group_;
    n_kv_ = (int)(q.end - 1) / group_ + 1 - kv_first_;
    const Range q_rows{q.begin * head_dim_, q.end * head_dim_};
    const Range kv_rows{(int64_t)kv_first_ * head_dim_, (int64_t)(kv_first_ + n_kv_) * head_dim_};
    const Range dim = Range::all(cfg.dim);
    wq_ = weights.matrix(prefix + "q", q_rows, dim);
    wk_ = weights.matrix(prefix + "k", kv_rows, dim);
    wv_ = weights.matrix(prefix + "v", kv_rows, dim);
    wo_ = weights.matrix(prefix + "o", dim, q_rows);
    if (options.bias) {
        q_bias_ = weights.vector(prefix + "q_bias", q_rows);
        k_bias_ = weights.vector(prefix + "k_bias", kv_rows);
        v_bias_ = weights.vector(prefix + "v_bias", kv_rows);
    }
    if (options.qk_norm) {
        q_norm_ = weights.vector(prefix + "q_norm");
        k_norm_ = weights.vector(prefix + "k_norm");
    }
    k_cache_ = KvCache(cfg.seq_len, n_kv_, head_dim_, cfg.kv_f16);
    v_cache_ = KvCache(cfg.seq_len, n_kv_, head_dim_, cfg.kv_f16);
}

void Attention::forward(BlockContext& ctx, const float* xn, int n, int pos, float* out) {
    const int q_dim = n_q_ * head_dim_, kv_dim = n_kv_ * head_dim_;
    ensure_size(q_, (size_t)n * q_dim);
    ensure_size(k_, (size_t)n * kv_dim);
    ensure_size(v_, (size_t)n * kv_dim);
    ensure_size(att_, (size_t)n * q_dim);

    in_.set(xn, n, wq_.cols());
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
                for (int h = 0; h < n_q_; h++) rms_norm(q + h * head_dim_, q_norm_.data(), head_dim_, eps_, q + h * head_dim_);
                for (int h = 0; h < n_kv_; h++) rms_norm(k + h * head_dim_, k_norm_.data(), head_dim_, eps_, k + h * head_dim_);
            }
            rope_.apply(q, n_q_, head_dim_, pos + (int)t);
            rope_.apply(k, n_kv_, head_dim_, pos + (int)t);
            k_cache_.put(pos + (int)t, k);
            v_cache_.put(pos + (int)t, v);
        }
    });

    // Work items are (token, run of query heads sharing one KV head): each cached key and value row is
    // read once per run, not once per query head. Runs are split only as far as needed to give every
    // thread work (decode with few local KV heads).
    std::vector<std::pair<int, int>> runs;  // [first, last) local query heads
    const int pieces = std::max(1, std::min(group_, (2 * ctx.pool.size() + n * n_kv_ - 1) / (n * n_kv_)));
    for (int h = 0; h < n_q_;) {
        const int kv_end = std::min(n_q_, ((q_first_ + h) / group_ + 1) * group_ - q_first_);  // end of this KV head's run
        const int step = std::max(1, (kv_end - h + pieces - 1) / pieces);
        for (; h < kv_end; h += step) runs.push_back({h, std::min(kv_end, h + step)});
    }
    const float scale = 1.0f / std::sqrt((float)head_dim_);
    ctx.pool.parallel_for((size_t)n * runs.size(), 1, [&](size_t i0, size_t i1, int thread) {
        std::vector<float>& scratch = ctx.scratch.per_thread[thread];
        for (size_t i = i0; i < i1; i++) {
            const int t = (int)(i / runs.size());
            const auto [first, last] = runs[i % runs.size()];
            const int kvh = (q_first_ + first) / group_ - kv_first_;
            const int n_ctx = pos + t + 1;
            const float* q = &q_[(size_t)t * q_dim];
            float* o = &att_[(size_t)t * q_dim];
            const int heads = last - first;
            for (int s = 0; s < n_ctx; s++)
                k_cache_.dot_heads(kvh, s, q + first * head_dim_, head_dim_, heads, &scratch[s], n_ctx);
            for (int h = 0; h < heads; h++) {
                float* sc = &scratch[(size_t)h * n_ctx];
                for (int s = 0; s < n_ctx; s++) sc[s] *= scale;
                softmax(sc, n_ctx);
            }
            std::fill(o + first * head_dim_, o + last * head_dim_, 0.0f);
            for (int s = 0; s < n_ctx; s++)
                v_cache_.axpy_heads(o + first * head_dim_, head_dim_, &scratch[s], n_ctx, heads, kvh, s);
        }
    });

    att_in_.set(att_.data(), n, q_dim);
    matmul(wo_, att_in_, out, ctx.pool);
}

// ---------------------------------------------------------------------------------------------
// Feed-forward

FeedForward::FeedForward(const WeightSource& weights, const std::string& prefix, int dim, int hidden,
                         const Partition& part) {
    // Quantized down projections are split between 32-value blocks of their input columns.
    const bool blocks = is_quantized(weights.info(prefix + "down").type);
    const Range rows = part.share_of(hidden, blocks ? kBlockSize : 1);
    if (rows.empty())
        throw std::invalid_argument(split_error(std::string(blocks ? "32-row blocks" : "rows") + " of " + prefix +
                                                "down's input", blocks ? hidden / kBlockSize : hidden, part));
    gate_ = weights.matrix(prefix + "gate", rows, Range::all(dim));
    up_ = weights.matrix(prefix + "up", rows, Range::all(dim));
    down_ = weights.matrix(prefix + "down", Range::all(dim), rows);
}

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

// ---------------------------------------------------------------------------------------------
// Mixture of experts

MoeFeedForward::MoeFeedForward(const WeightSource& weights, const std::string& prefix, const ModelConfig& cfg,
                               Scoring scoring, const Partition& part)
    : scoring_(scoring), n_experts_(cfg.n_experts), n_active_(cfg.n_active_experts), n_groups_(cfg.n_expert_groups),
      topk_groups_(cfg.topk_groups), norm_topk_(cfg.norm_topk_prob), scaling_(cfg.routed_scaling) {
    if (n_groups_ < 1 || n_experts_ % n_groups_ != 0 || topk_groups_ < 1 || topk_groups_ > n_groups_)
        throw std::invalid_argument("bad expert groups: " + std::to_string(n_experts_) + " experts, " +
                                    std::to_string(n_groups_) + " groups, top " + std::to_string(topk_groups_));
    if (n_active_ < 1 || n_active_ > n_experts_ / n_groups_ * topk_groups_)
        throw std::invalid_argument("cannot pick " + std::to_string(n_active_) + " of " + std::to_string(n_experts_) + " experts");
    router_ = weights.matrix(prefix + "router");
    if (weights.has(prefix + "router_bias")) router_bias_ = weights.vector(prefix + "router_bias");
    for (int e = 0; e < n_experts_; e++)
        experts_.push_back(std::make_unique<FeedForward>(weights, prefix + "experts." + std::to_string(e) + ".", cfg.dim,
                                                         cfg.moe_hidden_dim, part));
    if (cfg.n_shared_experts > 0)
        shared_ = std::make_unique<FeedForward>(weights, prefix + "shared.", cfg.dim,
                                                cfg.moe_hidden_dim * cfg.n_shared_experts, part);
}

size_t MoeFeedForward::weight_bytes_per_token() const {
    return router_.bytes() + router_bias_.size() * sizeof(float) + n_active_ * experts_[0]->weight_bytes_per_token() +
           (shared_ ? shared_->weight_bytes_per_token() : 0);
}

// The k best indexes of score[0..n) among those with allowed[i], best first.
static void top_k(const float* score, const std::vector<bool>& allowed, int n, int k, int* out) {
    std::vector<int> idx;
    for (int i = 0; i < n; i++)
        if (allowed[i]) idx.push_back(i);
    std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int a, int b) { return score[a] > score[b]; });
    std::copy(idx.begin(), idx.begin() + k, out);
}

void MoeFeedForward::route(const float* logits, int* experts, float* weights) const {
    const int n = n_experts_;
    std::vector<float> prob(n), choice(n);
    if (scoring_ == Scoring::Softmax) {
        std::copy(logits, logits + n, prob.begin());
        softmax(prob.data(), n);
        choice = prob;
    } else {
        for (int i = 0; i < n; i++) {
            prob[i] = 1.0f / (1.0f + std::exp(-logits[i]));
            choice[i] = prob[i] + (router_bias_.empty() ? 0.0f : router_bias_[i]);
        }
    }
    std::vector<bool> allowed(n, true);
    if (n_groups_ > 1) {
        // Keep the topk_groups groups whose two best experts score highest.
        const int per_group = n / n_groups_;
        std::vector<float> group_score(n_groups_);
        for (int g = 0; g < n_groups_; g++) {
            std::vector<float> s(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
            std::partial_sort(s.begin(), s.begin() + 2, s.end(), std::greater<float>());
            group_score[g] = s[0] + s[1];
        }
        std::vector<int> keep(topk_groups_);
        top_k(group_score.data(), std::vector<bool>(n_groups_, true), n_groups_, topk_groups_, keep.data());
        std::fill(allowed.begin(), allowed.end(), false);
        for (int g : keep) std::fill(allowed.begin() + g * per_group, allowed.begin() + (g + 1) * per_group, true);
    }
    top_k(choice.data(), allowed, n, n_active_, experts);
    float sum = 0.0f;
    for (int k = 0; k < n_active_; k++) sum += weights[k] = prob[experts[k]];
    const float norm = norm_topk_ ? 1.0f / (sum + (scoring_ == Scoring::Sigmoid ? 1e-20f : 0.0f)) : 1.0f;
    for (int k = 0; k < n_active_; k++) weights[k] *= norm * scaling_;
}

void MoeFeedForward::forward(BlockContext& ctx, const float* xn, int n, float* out) {
    const int dim = ctx.cfg.dim;
    ensure_size(logits_, (size_t)n * n_experts_);
    router_in_.set(xn, n, dim);
    matmul(router_, router_in_, logits_.data(), ctx.pool);

    // Which tokens each expert serves, with what weight.
    std::vector<std::vector<std::pair<int, float>>> tokens_of(n_experts_);
    std::vector<int> chosen(n_active_);
    std::vector<float> weight(n_active_);
    for (int t = 0; t < n; t++) {
        route(&logits_[(size_t)t * n_experts_], chosen.data(), weight.data());
        for (int k = 0; k < n_active_; k++) tokens_of[chosen[k]].push_back({t, weight[k]});
    }

    std::fill(out, out + (size_t)n * dim, 0.0f);
    for (int e = 0; e < n_experts_; e++) {
        const auto& served = tokens_of[e];
        if (served.empty()) continue;
        const int m = (int)served.size();
        ensure_size(gathered_, (size_t)m * dim);
        ensure_size(expert_out_, (size_t)m * dim);
        for (int i = 0; i < m; i++)
            std::copy(xn + (size_t)served[i].first * dim, xn + (size_t)(served[i].first + 1) * dim, &gathered_[(size_t)i * dim]);
        experts_[e]->forward(ctx, gathered_.data(), m, expert_out_.data());
        for (int i = 0; i < m; i++) {
            float* o = out + (size_t)served[i].first * dim;
            const float* y = &expert_out_[(size_t)i * dim];
            for (int d = 0; d < dim; d++) o[d] += served[i].second * y[d];
        }
    }
    if (shared_) {
        ensure_size(expert_out_, (size_t)n * dim);
        shared_->forward(ctx, xn, n, expert_out_.data());
        add(out, expert_out_.data(), n * dim);
    }
}

}  // namespace dllama

// ---------------------------------------------------------------------------------------------
// Multi-head latent attention

namespace dllama {

LatentAttention::LatentAttention(const WeightSource& weights, const std::string& prefix, const ModelConfig& cfg,
                                 const Partition& part, const RopeTable& rope)
    : kv_lora_(cfg.kv_lora_rank), nope_(cfg.qk_nope_dim), rope_dim_(cfg.qk_rope_dim), v_dim_(cfg.v_head_dim),
      q_lora_(cfg.q_lora_rank), latent_eps_(cfg.latent_norm_eps),
      scale_(cfg.attention_scale > 0 ? cfg.attention_scale : 1.0f / std::sqrt((float)(cfg.qk_nope_dim + cfg.qk_rope_dim))),
      rope_(rope) {
    const Range heads = part.share(cfg.n_heads);
    if (heads.empty()) throw std::invalid_argument(split_error("attention heads", cfg.n_heads, part));
    n_heads_ = (int)heads.size();
    const int qk = nope_ + rope_dim_;
    const Range dim = Range::all(cfg.dim);
    const Range q_rows{heads.begin * qk, heads.end * qk};
    if (q_lora_ > 0) {
        wq_a_ = weights.matrix(prefix + "q_a");
        q_a_norm_ = weights.vector(prefix + "q_a_norm");
        wq_b_ = weights.matrix(prefix + "q_b", q_rows, Range::all(q_lora_));
        if (weights.has(prefix + "q_a_bias")) q_a_bias_ = weights.vector(prefix + "q_a_bias");
    } else {
        wq_ = weights.matrix(prefix + "q", q_rows, dim);
    }
    wkv_a_ = weights.matrix(prefix + "kv_a");
    kv_a_norm_ = weights.vector(prefix + "kv_a_norm");
    if (weights.has(prefix + "kv_a_bias")) kv_a_bias_ = weights.vector(prefix + "kv_a_bias");
    for (int64_t h = heads.begin; h < heads.end; h++) {
        k_b_.push_back(weights.matrix(prefix + "k_b", Range{h * kv_lora_, (h + 1) * kv_lora_}, Range::all(nope_)));
        v_b_.push_back(weights.matrix(prefix + "v_b", Range{h * v_dim_, (h + 1) * v_dim_}, Range::all(kv_lora_)));
    }
    wo_ = weights.matrix(prefix + "o", dim, Range{heads.begin * v_dim_, heads.end * v_dim_});
    // A bias after the head-split output projection is added once, by node 0, before the sum.
    if (cfg.attention_out_bias && part.node == 0) o_bias_ = weights.vector(prefix + "o_bias");
    latent_cache_ = KvCache(cfg.seq_len, 1, kv_lora_, cfg.kv_f16);
    rope_cache_ = KvCache(cfg.seq_len, 1, rope_dim_, cfg.kv_f16);
}

size_t LatentAttention::weight_bytes() const {
    size_t total = wq_.bytes() + wq_a_.bytes() + wq_b_.bytes() + wkv_a_.bytes() + wo_.bytes();
    for (size_t h = 0; h < k_b_.size(); h++) total += k_b_[h].bytes() + v_b_[h].bytes();
    return total;
}

void LatentAttention::forward(BlockContext& ctx, const float* xn, int n, int pos, float* out) {
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
        rms_norm(kv, kv_a_norm_.data(), kv_lora_, latent_eps_, latent_.data());
        latent_cache_.put(pos + t, latent_.data());
        rope_.apply(kv + kv_lora_, 1, rope_dim_, pos + t);
        rope_cache_.put(pos + t, kv + kv_lora_);
        for (int h = 0; h < n_heads_; h++) rope_.apply(&q_[(size_t)t * q_width + h * qk + nope_], 1, rope_dim_, pos + t);
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

    // Scores against cached latents and rope keys; the weighted sum of latents per (token, head).
    ensure_size(lat_, (size_t)n * n_heads_ * kv_lora_);
    ctx.pool.parallel_for((size_t)n * n_heads_, 1, [&](size_t i0, size_t i1, int thread) {
        std::vector<float>& scores = ctx.scratch.per_thread[thread];
        for (size_t i = i0; i < i1; i++) {
            const int t = (int)(i / n_heads_), h = (int)(i % n_heads_);
            const int n_ctx = pos + t + 1;
            const float* ql = &q_lat_[i * kv_lora_];
            const float* qr = &q_[(size_t)t * q_width + h * qk + nope_];
            for (int s = 0; s < n_ctx; s++)
                scores[s] = (latent_cache_.dot(0, s, ql) + rope_cache_.dot(0, s, qr)) * scale_;
            softmax(scores.data(), n_ctx);
            float* l = &lat_[i * kv_lora_];
            std::fill(l, l + kv_lora_, 0.0f);
            for (int s = 0; s < n_ctx; s++) latent_cache_.axpy(l, scores[s], 0, s);
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
