// What every layer block shares: the interfaces the decoder calls and the context it passes.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "model.h"

namespace dllama {

// Everything a block needs from its model while running.
struct BlockContext {
    const ModelConfig& cfg;
    ThreadPool& pool;
    Scratch& scratch;
};

class AttentionBlock {
public:
    virtual ~AttentionBlock() = default;
    // xn: n x dim (normed input) at positions pos..pos+n-1; out: n x dim partial output.
    virtual void forward(BlockContext& ctx, const float* xn, int n, int pos, float* out) = 0;
    virtual size_t weight_bytes() const = 0;
    virtual size_t kv_bytes_per_position() const = 0;
};

class FeedForwardBlock {
public:
    virtual ~FeedForwardBlock() = default;
    virtual void forward(BlockContext& ctx, const float* xn, int n, float* out) = 0;
    virtual size_t weight_bytes_per_token() const = 0;
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
