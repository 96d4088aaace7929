#include "blocks/moe.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <stdexcept>

namespace dllama {

MoeFeedForward::MoeFeedForward(const WeightSource& weights, const std::string& prefix, const ModelConfig& cfg,
                               Scoring scoring, const Partition& part)
    : scoring_(scoring), n_experts_(cfg.n_experts), n_active_(cfg.n_active_experts), n_groups_(cfg.n_expert_groups),
      topk_groups_(cfg.topk_groups), norm_topk_(cfg.norm_topk_prob), scaling_(cfg.routed_scaling) {
    if (n_groups_ < 1 || n_experts_ % n_groups_ != 0 || topk_groups_ < 1 || topk_groups_ > n_groups_)
        throw std::invalid_argument("bad expert groups: " + std::to_string(n_experts_) + " experts, " +
                                    std::to_string(n_groups_) + " groups, top " + std::to_string(topk_groups_));
    if (n_active_ < 1 || n_active_ > n_experts_ / n_groups_ * topk_groups_)
        throw std::invalid_argument("cannot pick " + std::to_string(n_active_) + " of " + std::to_string(n_experts_) + " experts");
    router_ = weights.matrix(prefix + "router", Range::all(n_experts_), Range::all(cfg.dim));
    if (weights.has(prefix + "router_bias")) router_bias_ = weights.vector(prefix + "router_bias", Range::all(n_experts_));
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
