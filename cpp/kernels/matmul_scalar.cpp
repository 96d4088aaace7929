// Portable kernels over the 16-row group layout (matmul_kernels.h), for CPUs without AVX2.
#include "kernels/matmul_kernels.h"

#if defined(DLLAMA_MATMUL_SCALAR)
#include <cmath>
#include <cstring>

#include "quants.h"

namespace dllama::kernels {

void quantize_x(const float* x, int64_t n_blocks, int8_t* qs, float* d, int32_t* sum) {
    for (int64_t b = 0; b < n_blocks; b++) {
        const float* g = x + b * kBlockSize;
        float amax = 0.0f;
        for (int j = 0; j < kBlockSize; j++) amax = std::fmax(amax, std::fabs(g[j]));
        const float scale = amax / 127.0f;
        const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
        d[b] = f16_to_f32(f32_to_f16(scale));
        int32_t s = 0;
        for (int j = 0; j < kBlockSize; j++) {
            const int8_t q = (int8_t)std::round(g[j] * inv);
            qs[b * kBlockSize + j] = q;
            s += q;
        }
        sum[b] = s;
    }
}

template <typename T>
static void group_float(const T* w, int64_t cols, const float* x, int n_tokens, float* y, int64_t ldy, int n_rows,
                        float (*load)(T)) {
    for (int t = 0; t < n_tokens; t++) {
        float acc[kGroupRows] = {};
        const float* xt = x + t * cols;
        for (int64_t c = 0; c < cols; c++)
            for (int i = 0; i < kGroupRows; i++) acc[i] += load(w[c * kGroupRows + i]) * xt[c];
        for (int i = 0; i < n_rows; i++) y[t * ldy + i] = acc[i];
    }
}

void group_f32(const uint8_t* g, int64_t cols, const float* x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    group_float<float>(reinterpret_cast<const float*>(g), cols, x, n_tokens, y, ldy, n_rows, [](float v) { return v; });
}

void group_f16(const uint8_t* g, int64_t cols, const float* x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    group_float<uint16_t>(reinterpret_cast<const uint16_t*>(g), cols, x, n_tokens, y, ldy, n_rows, f16_to_f32);
}

// Shared by Q40 and Q80. For each block, dot_block(quants, x_q, dot) adds the integer products of all
// 16 rows into dot[16]; the loops run across rows so compilers can vectorize them.
template <int64_t BlockBytes, typename Dot>
static void group_quantized(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows,
                            Dot dot_block) {
    const uint8_t* scales = g + x.nb * BlockBytes;
    for (int t = 0; t < n_tokens; t++) {
        float acc[kGroupRows] = {};
        for (int64_t b = 0; b < x.nb; b++) {
            const int64_t xb = t * x.nb + b;
            int32_t dot[kGroupRows] = {};
            dot_block(g + b * BlockBytes, x.qs + xb * kBlockSize, dot);
            for (int i = 0; i < kGroupRows; i++) {
                uint16_t h;
                std::memcpy(&h, scales + (b * kGroupRows + i) * 2, 2);
                acc[i] += (float)dot[i] * (f16_to_f32(h) * x.d[xb]);
            }
        }
        for (int i = 0; i < n_rows; i++) y[t * ldy + i] = acc[i];
    }
}

void group_q40(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    group_quantized<kQ40BlockBytes>(g, x, n_tokens, y, ldy, n_rows, [](const uint8_t* q, const int8_t* xs, int32_t* dot) {
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < kGroupRows; i++)
                for (int e = 0; e < 4; e++) {
                    const uint8_t v = q[k * 64 + i * 4 + e];
                    dot[i] += ((v & 15) - 8) * xs[4 * k + e] + ((v >> 4) - 8) * xs[16 + 4 * k + e];
                }
    });
}

void group_q80(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    group_quantized<kQ80BlockBytes>(g, x, n_tokens, y, ldy, n_rows, [](const uint8_t* q, const int8_t* xs, int32_t* dot) {
        for (int k = 0; k < 8; k++)
            for (int i = 0; i < kGroupRows; i++)
                for (int e = 0; e < 4; e++) dot[i] += (int8_t)q[k * 64 + i * 4 + e] * xs[4 * k + e];
    });
}

}  // namespace dllama::kernels
#endif
