// The KV cache of one attention block.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "tensor.h"

namespace dllama {

// Cached keys/values (or latents) of n_heads heads, each head's history contiguous, in f32 or (to halve
// memory and bandwidth) f16. Two layouts:
// - Rows: [head][position][width], for dot products with one row at a time and for weighted sums.
// - PositionBlocks: [head][position / 16][width][16], keys transposed in blocks of 16 positions, so that
//   scores() computes 16 positions per vector instruction with no horizontal sums.
class KvCache {
public:
    enum class Layout { Rows, PositionBlocks };
    KvCache() = default;
    KvCache(int rows, int n_heads, int head_width, bool f16, Layout layout = Layout::Rows);
    void put(int row, const float* values);  // n_heads * head_width values of one position
    // Rows layout: q . row, and y += a * row.
    float dot(int head, int row, const float* q) const;
    void axpy(float* y, float a, int head, int row) const;
    // For n_q queries (q_stride apart) reading `head`: out[i * out_stride + s] = q_i . row s, s < n_rows.
    void scores(int head, int n_rows, const float* q, int q_stride, int n_q, float* out, int out_stride) const;
    // For n_q weightings (p_stride apart): y_i = sum over s < n_rows of p_i[s] * row s (y_i y_stride apart).
    void weighted_sum(int head, int n_rows, const float* p, int p_stride, int n_q, float* y, int y_stride) const;
    size_t bytes_per_row() const { return (size_t)n_heads_ * width_ * (f16_ ? 2 : 4); }

private:
    static constexpr int kBlock = 16;
    size_t index(int head, int row, int d) const;  // of one value
    float value(int head, int row, int d) const;
    size_t at(int head, int row) const { return ((size_t)head * padded_rows_ + row) * width_; }  // Rows only
    int rows_ = 0, padded_rows_ = 0, n_heads_ = 0, width_ = 0;
    bool f16_ = false;
    Layout layout_ = Layout::Rows;
    std::vector<float> f32_;
    std::vector<uint16_t> half_;
};

}  // namespace dllama
