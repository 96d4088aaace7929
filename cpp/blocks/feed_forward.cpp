#include "blocks/feed_forward.h"

#include <algorithm>
#include <stdexcept>

namespace dllama {

FeedForward::FeedForward(const WeightSource& weights, const std::string& prefix, int dim, int hidden,
                         const Partition& part) {
    const Range rows = UnitSplit::of(weights, prefix + "down", hidden, "hidden rows").share(part);
    hidden_ = (int)rows.size();
    output_ = hidden_ < hidden ? BlockOutput::PartialSum : BlockOutput::Complete;
    gate_up_ = weights.stacked({{prefix + "gate", rows}, {prefix + "up", rows}}, Range::all(dim));
    down_ = weights.matrix(prefix + "down", Range::all(dim), rows);
}

void FeedForward::forward(BlockContext& ctx, const float* xn, int n, float* out) {
    const int h = hidden_;
    ensure_size(gu_, (size_t)n * 2 * h);
    in_.set(xn, n, gate_up_.cols());
    matmul(gate_up_, in_, gu_.data(), ctx.pool);
    ctx.pool.parallel_for(n, 1, [&](size_t t0, size_t t1, int) {
        for (size_t t = t0; t < t1; t++) silu_mul(&gu_[t * 2 * h], &gu_[t * 2 * h + h], h);
    });
    // Pack the activated rows (the gate halves) together as the down projection's input.
    for (int t = 1; t < n; t++) std::copy(&gu_[(size_t)t * 2 * h], &gu_[(size_t)t * 2 * h + h], &gu_[(size_t)t * h]);
    mid_.set(gu_.data(), n, h);
    matmul(down_, mid_, out, ctx.pool);
}

}  // namespace dllama
