// Mixture of experts.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "blocks/feed_forward.h"

namespace dllama {

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
    // The experts' rows are shared out like a dense FFN's; the router runs whole on every node.
    BlockOutput output() const override { return experts_[0]->output(); }

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

}  // namespace dllama
