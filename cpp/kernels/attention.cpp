#include "kernels/attention.h"

#include <algorithm>
#include <type_traits>

#include "kernels/ops.h"
#include "quants.h"
#if defined(__AVX512F__)
#include <immintrin.h>
// GCC 12 reports false "uninitialized" warnings from inside its own AVX-512 intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace dllama {

static float value(const KvHistory& h, int row, int d) {
    const size_t i = kv_index(h.layout, h.width, row, d);
    return h.f16 ? f16_to_f32(h.f16[i]) : h.f32[i];
}

#if defined(__AVX512F__)
// 16 values of the history as f32.
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

// NQ weightings over n_rows rows of up to 128 values (NV vectors kept in registers per weighting).
template <int NQ, int NV>
static void rows_weighted_sum(const float* f32, const uint16_t* half, int width, int n_rows, const float* p,
                              int p_stride, float* y, int y_stride) {
    __m512 acc[NQ][NV];
    for (int i = 0; i < NQ; i++)
        for (int v = 0; v < NV; v++) acc[i][v] = _mm512_setzero_ps();
    for (int s = 0; s < n_rows; s++) {
        const size_t row = (size_t)s * width;
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
static void blocks_weighted_sum(const float* f32, const uint16_t* half, int width, int n_rows, const float* p,
                                int p_stride, float* y, int y_stride, int d0) {
    __m512 acc[NQ][DD];
    for (int i = 0; i < NQ; i++)
        for (int dd = 0; dd < DD; dd++) acc[i][dd] = _mm512_setzero_ps();
    for (int b = 0; b * 16 < n_rows; b++) {
        const __mmask16 mask = (__mmask16)((1u << std::min(16, n_rows - b * 16)) - 1);
        const size_t base = (size_t)b * 16 * width;
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

void attention_scores(const KvHistory& keys, int n_rows, const float* q, int q_stride, int n_q, float* out,
                      int out_stride) {
    const int width = keys.width;
#if defined(__AVX512F__)
    if (keys.layout == KvLayout::PositionBlocks) {
        for (int b = 0; b * kPositionBlock < n_rows; b++) {
            const size_t base = (size_t)b * kPositionBlock * width;
            const int left = std::min(kPositionBlock, n_rows - b * kPositionBlock);
            const __mmask16 mask = (__mmask16)((1u << left) - 1);
            float* o = out + b * kPositionBlock;
            int i = 0;
            for (; i + 4 <= n_q; i += 4)
                block_scores<4>(keys.f32, keys.f16, base, width, q + i * q_stride, q_stride, o + (size_t)i * out_stride, out_stride, mask);
            for (; i < n_q; i++)
                block_scores<1>(keys.f32, keys.f16, base, width, q + i * q_stride, q_stride, o + (size_t)i * out_stride, out_stride, mask);
        }
        return;
    }
#endif
    for (int i = 0; i < n_q; i++) {
        const float* qi = q + i * q_stride;
        for (int s = 0; s < n_rows; s++) {
            float sum = 0.0f;
            if (keys.layout == KvLayout::Rows) {
                const size_t row = (size_t)s * width;
                sum = keys.f16 ? dot_f16(qi, keys.f16 + row, width) : dot(qi, keys.f32 + row, width);
            } else {
                for (int d = 0; d < width; d++) sum += qi[d] * value(keys, s, d);
            }
            out[(size_t)i * out_stride + s] = sum;
        }
    }
}

void attention_weighted_sum(const KvHistory& values, int n_rows, const float* p, int p_stride, int n_q, float* y,
                            int y_stride) {
    const int width = values.width;
#if defined(__AVX512F__)
    const float* f32 = values.f32;
    const uint16_t* half = values.f16;
    if (values.layout == KvLayout::PositionBlocks && width % 8 == 0) {
        for (int d0 = 0; d0 < width; d0 += 8) {
            int i = 0;
            for (; i + 2 <= n_q; i += 2)
                blocks_weighted_sum<2, 8>(f32, half, width, n_rows, p + (size_t)i * p_stride, p_stride,
                                          y + (size_t)i * y_stride, y_stride, d0);
            for (; i < n_q; i++)
                blocks_weighted_sum<1, 8>(f32, half, width, n_rows, p + (size_t)i * p_stride, p_stride,
                                          y + (size_t)i * y_stride, y_stride, d0);
        }
        return;
    }
    if (values.layout == KvLayout::Rows && width % 16 == 0 && width <= 128) {
        auto run = [&](auto nv) {
            constexpr int NV = decltype(nv)::value;
            int i = 0;
            for (; i + 2 <= n_q; i += 2)
                rows_weighted_sum<2, NV>(f32, half, width, n_rows, p + (size_t)i * p_stride, p_stride, y + (size_t)i * y_stride, y_stride);
            for (; i < n_q; i++)
                rows_weighted_sum<1, NV>(f32, half, width, n_rows, p + (size_t)i * p_stride, p_stride, y + (size_t)i * y_stride, y_stride);
        };
        switch (width / 16) {
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
        std::fill(yi, yi + width, 0.0f);
        for (int s = 0; s < n_rows; s++) {
            const float w = p[(size_t)i * p_stride + s];
            if (values.layout == KvLayout::Rows) {
                const size_t row = (size_t)s * width;
                if (values.f16) axpy_f16(yi, w, values.f16 + row, width);
                else axpy(yi, w, values.f32 + row, width);
            } else {
                for (int d = 0; d < width; d++) yi[d] += w * value(values, s, d);
            }
        }
    }
}

}  // namespace dllama
