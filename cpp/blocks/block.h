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

// How a block's work is shared between nodes: its `units` (attention heads, or hidden rows of a
// feed-forward) are cut into contiguous node shares, each unit `width` input columns of the block's
// output projection `tensor`. A quantized projection can only be cut between its 32-value blocks, so
// shares are whole groups of grain() units (shares then differ by up to a group, which is fine).
struct UnitSplit {
    std::string tensor, unit;  // for messages: "layers.0.attn.o", "heads"
    int64_t units = 0, width = 1;
    FloatType type = FloatType::F32;

    // The split of `units` of equal width across the input columns of the projection `tensor`.
    static UnitSplit of(const WeightSource& weights, const std::string& tensor, int64_t units, const std::string& unit);
    int64_t grain() const;
    int64_t max_nodes() const { return units / grain(); }
    // Why no more than max_nodes() nodes can share it.
    std::string limit() const;
    // "" when every node of the partition gets at least one unit; else why not and which splits work.
    std::string refusal(const Partition& part) const;
    // This node's units; throws std::invalid_argument (the refusal) when some node would get none.
    Range share(const Partition& part) const;
};

}  // namespace dllama
