// What every layer block shares: the interfaces the decoder calls and the context it passes.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model.h"

namespace dllama {

// Everything a block needs from its model while running a step.
struct BlockContext {
    const ModelConfig& cfg;
    ThreadPool& pool;
    Scratch& scratch;
    const Batch& batch;  // the step's rows: each one's sequence slot and position
};

// What a block's output is on this node: the whole result, or a partial sum (the block computed
// only this node's share of its heads or rows) that the decoder adds up across the nodes.
enum class BlockOutput { Complete, PartialSum };

// Blocks hold weights only: sequence state (the KV cache) is passed in.
class AttentionBlock {
public:
    virtual ~AttentionBlock() = default;
    // The tensors the block caches per position, in the order forward() receives them.
    virtual std::vector<KvShape> cache_shapes() const = 0;
    // xn: the batch's rows, normed (n x dim); cache: this layer's tensors; out: n x dim.
    virtual void forward(BlockContext& ctx, const float* xn, KvCache::Layer& cache, float* out) = 0;
    virtual size_t weight_bytes() const = 0;
    virtual BlockOutput output() const = 0;
};

class FeedForwardBlock {
public:
    virtual ~FeedForwardBlock() = default;
    virtual void forward(BlockContext& ctx, const float* xn, int n, float* out) = 0;
    virtual size_t weight_bytes_per_token() const = 0;
    virtual BlockOutput output() const = 0;
};

// Applies rms_norm to each of n rows of width dim (in parallel for prefill chunks); out may alias x.
void rms_norm_rows(ThreadPool& pool, const float* x, const float* w, int n, int dim, float eps, float* out);

// Grows v to hold at least n values (block scratch buffers are sized by the first chunks they see).
inline void ensure_size(std::vector<float>& v, size_t n) {
    if (v.size() < n) v.resize(n);
}

// The message for a tensor that cannot be shared by every node.
inline std::string split_error(const std::string& what, int64_t n, const Partition& part) {
    return "cannot split " + std::to_string(n) + " " + what + " across " + std::to_string(part.n_nodes) +
           " nodes: every node needs at least one";
}

}  // namespace dllama
