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

// Shared by Q40 and Q80: `weight(block, j, row)` is the integer weight of element j.
template <typename Weight>
static void group_quantized(const uint8_t* scales, const QuantizedX& x, int n_tokens, float* y, int64_t ldy,
                            int n_rows, Weight weight) {
    for (int t = 0; t < n_tokens; t++) {
        const int8_t* xq = x.qs + t * x.nb * kBlockSize;
        for (int i = 0; i < n_rows; i++) {
            float acc = 0.0f;
            for (int64_t b = 0; b < x.nb; b++) {
                int32_t dot = 0;
                for (int j = 0; j < kBlockSize; j++) dot += weight(b, j, i) * xq[b * kBlockSize + j];
                uint16_t h;
                std::memcpy(&h, scales + (b * kGroupRows + i) * 2, 2);
                acc += (float)dot * (f16_to_f32(h) * x.d[t * x.nb + b]);
            }
            y[t * ldy + i] = acc;
        }
    }
}

void group_q40(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    group_quantized(g + x.nb * kQ40BlockBytes, x, n_tokens, y, ldy, n_rows, [g](int64_t b, int j, int i) {
        const int jj = j % 16;
        const uint8_t q = g[b * kQ40BlockBytes + jj / 4 * 64 + i * 4 + jj % 4];
        return (j < 16 ? q & 15 : q >> 4) - 8;
    });
}

void group_q80(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    group_quantized(g + x.nb * kQ80BlockBytes, x, n_tokens, y, ldy, n_rows, [g](int64_t b, int j, int i) {
        return (int)(int8_t)g[b * kQ80BlockBytes + j / 4 * 64 + i * 4 + j % 4];
    });
}

}  // namespace dllama::kernels
#endif
