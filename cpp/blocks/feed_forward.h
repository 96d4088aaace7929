// The SwiGLU feed-forward.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "blocks/block.h"

namespace dllama {

// SwiGLU: down(silu(gate(x)) * up(x)), weights "<prefix>gate", "<prefix>up", "<prefix>down"; a node
// takes a share of the hidden rows (in whole 32-value blocks).
class FeedForward : public FeedForwardBlock {
public:
    FeedForward(const WeightSource& weights, const std::string& prefix, int dim, int hidden, const Partition& part);
    void forward(BlockContext& ctx, const float* xn, int n, float* out) override;
    size_t weight_bytes_per_token() const override { return gate_up_.bytes() + down_.bytes(); }
    BlockOutput output() const override { return output_; }

private:
    int hidden_;
    BlockOutput output_;
    Matrix gate_up_, down_;  // gate and up rows stacked: one product gives [gate | up] per token
    std::vector<float> gu_;
    Activations in_, mid_;
};

}  // namespace dllama
