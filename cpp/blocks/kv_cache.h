// The KV cache of one attention block.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace dllama {

// Cached keys/values (or latents) of n_heads heads, each head's rows contiguous ([head][position][width]),
// so that attention streams one head's history sequentially; f32, or f16 to halve memory and bandwidth.
class KvCache {
public:
    KvCache() = default;
    KvCache(int rows, int n_heads, int head_width, bool f16);
    void put(int row, const float* values);  // n_heads * head_width values of one position
    float dot(int head, int row, const float* q) const;
    void axpy(float* y, float a, int head, int row) const;
    // For n_q query heads (q_stride apart) reading this head: out[i * out_stride] = q_i . row.
    void dot_heads(int head, int row, const float* q, int q_stride, int n_q, float* out, int out_stride) const;
    // y_i += a[i * a_stride] * row for n_q outputs y_i (y_stride apart).
    void axpy_heads(float* y, int y_stride, const float* a, int a_stride, int n_q, int head, int row) const;
    size_t bytes_per_row() const { return (size_t)n_heads_ * width_ * (f16_ ? 2 : 4); }

private:
    size_t at(int head, int row) const { return ((size_t)head * rows_ + row) * width_; }
    int rows_ = 0, n_heads_ = 0, width_ = 0;
    bool f16_ = false;
    std::vector<float> f32_;
    std::vector<uint16_t> half_;
};

}  // namespace dllama
