#include "blocks/feed_forward.h"

#include <stdexcept>

namespace dllama {

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

}  // namespace dllama
