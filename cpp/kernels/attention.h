// Attention over one head's cached history: scores of queries against cached keys, and weighted sums
// of cached values (or, for latent attention, of cached latents).
#pragma once
#include <cstddef>
#include <cstdint>

namespace dllama {

// How a head's history of `width`-value rows is laid out:
// - Rows: [position][width], for weighted sums that keep a row's values in registers.
// - PositionBlocks: [position / 16][width][16], keys transposed in blocks of 16 positions, so that
//   scores are computed 16 positions per vector instruction with no horizontal sums.
enum class KvLayout { Rows, PositionBlocks };
constexpr int kPositionBlock = 16;

// Where value d of row `row` lies in a head's history.
inline size_t kv_index(KvLayout layout, int width, int row, int d) {
    if (layout == KvLayout::Rows) return (size_t)row * width + d;
    return (size_t)(row / kPositionBlock) * kPositionBlock * width + (size_t)d * kPositionBlock + row % kPositionBlock;
}

// One head's history: rows from position 0 on, in f32 (f16 == nullptr) or f16 (f32 == nullptr).
struct KvHistory {
    const float* f32 = nullptr;
    const uint16_t* f16 = nullptr;
    int width = 0;
    KvLayout layout = KvLayout::Rows;
};

// For n_q queries (q_stride apart): out[i * out_stride + s] = q_i . row s, for s < n_rows.
void attention_scores(const KvHistory& keys, int n_rows, const float* q, int q_stride, int n_q, float* out,
                      int out_stride);

// For n_q weightings (p_stride apart): y_i = sum over s < n_rows of p_i[s] * row s (y_i y_stride apart).
void attention_weighted_sum(const KvHistory& values, int n_rows, const float* p, int p_stride, int n_q, float* y,
                            int y_stride);

}  // namespace dllama
