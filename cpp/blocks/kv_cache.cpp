#include "blocks/kv_cache.h"

#include <algorithm>

#include "kernels/ops.h"
#include "quants.h"
#if defined(__AVX512F__)
#include <immintrin.h>
// GCC 12 reports false "uninitialized" warnings from inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace dllama {

KvCache::KvCache(int rows, int n_heads, int head_width, bool f16, Layout layout)
    : rows_(rows), padded_rows_((rows + kBlock - 1) / kBlock * kBlock), n_heads_(n_heads), width_(head_width),
      f16_(f16), layout_(layout) {
    const size_t n = (size_t)padded_rows_ * n_heads * head_width;
    if (f16) half_.assign(n, 0);
    else f32_.assign(n, 0.0f);
}

size_t KvCache::index(int head, int row, int d) const {
    if (layout_ == Layout::Rows) return at(head, row) + d;
    return ((size_t)head * padded_rows_ + (size_t)(row / kBlock) * kBlock) * width_ + (size_t)d * kBlock + row % kBlock;
}

float KvCache::value(int head, int row, int d) const {
    const size_t i = index(head, row, d);
    return f16_ ? f16_to_f32(half_[i]) : f32_[i];
}

void KvCache::put(int row, const float* values) {
    for (int h = 0; h < n_heads_; h++)
        for (int d = 0; d < width_; d++) {
            const float v = values[(size_t)h * width_ + d];
            if (f16_) half_[index(h, row, d)] = f32_to_f16(v);
            else f32_[index(h, row, d)] = v;
        }
}

float KvCache::dot(int head, int row, const float* q) const {
    return f16_ ? dot_f16(q, &half_[at(head, row)], width_) : dllama::dot(q, &f32_[at(head, row)], width_);
}

void KvCache::axpy(float* y, float a, int head, int row) const {
    if (f16_) axpy_f16(y, a, &half_[at(head, row)], width_);
    else dllama::axpy(y, a, &f32_[at(head, row)], width_);
}

#if defined(__AVX512F__)
// 16 values of the cache as f32.
static inline __m512 load16(const float* f32, const uint16_t* half, size_t i) {
    return half ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i*)(half + i))) : _mm512_loadu_ps(f32 + i);
}

// NQ queries against one block of 16 positions: one FMA per (dimension, query) covers 16 positions.
template <int NQ>
static void block_scores(const float* f32, const uint16_t* half, size_t base, int width, const float* q, int q_stride,
                         float* out, int out_stride, __mmask16 mask) {
    __m512 acc[NQ];
    for (int i = 0; i < NQ; i++) acc[i] = _mm512_setzero_ps();
    for (int d = 0; d < width; d++) {
        const __m512 k = load16(f32, half, base + (size_t)d * 16);
        for (int i = 0; i < NQ; i++) acc[i] = _mm512_fmadd_ps(_mm512_set1_ps(q[i * q_stride + d]), k, acc[i]);
    }
    for (int i = 0; i < NQ; i++) _mm512_mask_storeu_ps(out + (size_t)i * out_stride, mask, acc[i]);
}

// Two weightings over n_rows rows of up to 128 values (8 vectors kept in registers per weighting).
template <int NQ, int NV>
static void rows_weighted_sum(const float* f32, const uint16_t* half, size_t base, int width, int n_rows, const float* p,
                              int p_stride, float* y, int y_stride) {
    __m512 acc[NQ][NV];
    for (int i = 0; i < NQ; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    for (int s = 0; s < n_rows; s++) {
        const size_t row = base + (size_t)s * width;
        __m512 x[NV];
        for (int v = 0; v < NV; v++) x[v] = load16(f32, half, row + v * 16);
        for (int i = 0; i < NQ; i++) {
            const __m512 w = _mm512_set1_ps(p[(size_t)i * p_stride + s]);
            for (int v = 0; v < NV; v++) acc[i][v] = _mm512_fmadd_ps(w, x[v], acc[i][v]);
        }
    }
    for (int i = 0; i < NQ; i++)
        for (int v = 0; v < NV; v++) _mm512_storeu_ps(y + (size_t)i * y_stride + v * 16, acc[i][v]);
}

// NQ weightings over position blocks, for DD dimensions starting at d0: each accumulator holds 16
// positions of one dimension, summed across lanes once at the end.
template <int NQ, int DD>
static void blocks_weighted_sum(const float* f32, const uint16_t* half, size_t head_base, int width, int n_rows,
                                const float* p, int p_stride, float* y, int y_stride, int d0) {
    __m512 acc[NQ][DD];
    for (int i = 0; i < NQ; i++)
        for (int dd = 0; dd < DD; dd++) acc[i][dd] = _mm512_setzero_ps();
    for (int b = 0; b * 16 < n_rows; b++) {
        const __mmask16 mask = (__mmask16)((1u << std::min(16, n_rows - b * 16)) - 1);
        const size_t base = head_base + (size_t)b * 16 * width;
        __m512 w[NQ];
        for (int i = 0; i < NQ; i++) w[i] = _mm512_maskz_loadu_ps(mask, p + (size_t)i * p_stride + b * 16);
        for (int dd = 0; dd < DD; dd++) {
            const __m512 k = load16(f32, half, base + (size_t)(d0 + dd) * 16);
            for (int i = 0; i < NQ; i++) acc[i][dd] = _mm512_fmadd_ps(w[i], k, acc[i][dd]);
        }
    }
    for (int i = 0; i < NQ; i++)
        for (int dd = 0; dd < DD; dd++) y[(size_t)i * y_stride + d0 + dd] = _mm512_reduce_add_ps(acc[i][dd]);
}
#endif

void KvCache::scores(int head, int n_rows, const float* q, int q_stride, int n_q, float* out, int out_stride) const {
#if defined(__AVX512F__)
    if (layout_ == Layout::PositionBlocks) {
        const uint16_t* half = f16_ ? half_.data() : nullptr;
        for (int b = 0; b * kBlock < n_rows; b++) {
            const size_t base = ((size_t)head * padded_rows_ + (size_t)b * kBlock) * width_;
            const int left = std::min(kBlock, n_rows - b * kBlock);
            const __mmask16 mask = (__mmask16)((1u << left) - 1);
            int i = 0;
            for (; i + 4 <= n_q; i += 4)
                block_scores<4>(f32_.data(), half, base, width_, q + i * q_stride, q_stride, out + (size_t)i * out_stride + b * kBlock, out_stride, mask);
            for (; i < n_q; i++)
                block_scores<1>(f32_.data(), half, base, width_, q + i * q_stride, q_stride, out + (size_t)i * out_stride + b * kBlock, out_stride, mask);
        }
        return;
    }
#endif
    for (int i = 0; i < n_q; i++)
        for (int s = 0; s < n_rows; s++) {
            float sum = 0.0f;
            if (layout_ == Layout::Rows) {
                sum = dot(head, s, q + i * q_stride);
            } else {
                for (int d = 0; d < width_; d++) sum += q[i * q_stride + d] * value(head, s, d);
            }
            out[(size_t)i * out_stride + s] = sum;
        }
}

void KvCache::weighted_sum(int head, int n_rows, const float* p, int p_stride, int n_q, float* y, int y_stride) const {
#if defined(__AVX512F__)
    if (layout_ == Layout::PositionBlocks && width_ % 8 == 0) {
        const uint16_t* half = f16_ ? half_.data() : nullptr;
        const size_t base = (size_t)head * padded_rows_ * width_;
        for (int d0 = 0; d0 < width_; d0 += 8) {
            int i = 0;
            for (; i + 2 <= n_q; i += 2)
                blocks_weighted_sum<2, 8>(f32_.data(), half, base, width_, n_rows, p + (size_t)i * p_stride, p_stride,
                                          y + (size_t)i * y_stride, y_stride, d0);
            for (; i < n_q; i++)
                blocks_weighted_sum<1, 8>(f32_.data(), half, base, width_, n_rows, p + (size_t)i * p_stride, p_stride,
                                          y + (size_t)i * y_stride, y_stride, d0);
        }
        return;
    }
    if (layout_ == Layout::Rows && width_ % 16 == 0 && width_ <= 128) {
        const uint16_t* half = f16_ ? half_.data() : nullptr;
        const size_t base = at(head, 0);
        auto run = [&](auto nv) {
            constexpr int NV = decltype(nv)::value;
            int i = 0;
            for (; i + 2 <= n_q; i += 2)
                rows_weighted_sum<2, NV>(f32_.data(), half, base, width_, n_rows, p + (size_t)i * p_stride, p_stride, y + (size_t)i * y_stride, y_stride);
            for (; i < n_q; i++)
                rows_weighted_sum<1, NV>(f32_.data(), half, base, width_, n_rows, p + (size_t)i * p_stride, p_stride, y + (size_t)i * y_stride, y_stride);
        };
        switch (width_ / 16) {
            case 1: run(std::integral_constant<int, 1>{}); return;
            case 2: run(std::integral_constant<int, 2>{}); return;
            case 3: run(std::integral_constant<int, 3>{}); return;
            case 4: run(std::integral_constant<int, 4>{}); return;
            case 5: run(std::integral_constant<int, 5>{}); return;
            case 6: run(std::integral_constant<int, 6>{}); return;
            case 7: run(std::integral_constant<int, 7>{}); return;
            default: run(std::integral_constant<int, 8>{}); return;
        }
    }
#endif
    for (int i = 0; i < n_q; i++) {
        float* yi = y + (size_t)i * y_stride;
        std::fill(yi, yi + width_, 0.0f);
        for (int s = 0; s < n_rows; s++) {
            const float w = p[(size_t)i * p_stride + s];
            if (layout_ == Layout::Rows) {
                axpy(yi, w, head, s);
            } else {
                for (int d = 0; d < width_; d++) yi[d] += w * value(head, s, d);
            }
        }
    }
}

}  // namespace dllama
