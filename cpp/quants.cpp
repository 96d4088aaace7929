#include "quants.h"

#include <cmath>
#include <cstring>
#if defined(__F16C__)
#include <immintrin.h>
#endif

namespace dllama {

float f16_to_f32(uint16_t h) {
#if defined(__F16C__)
    return _cvtsh_ss(h);
#else
    const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    const uint32_t exp = (h >> 10) & 0x1f;
    const uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0) {
        if (mant == 0) {
            bits = sign;
        } else {  // subnormal: value = mant * 2^-24
            float v = std::ldexp((float)mant, -24);
            std::memcpy(&bits, &v, 4);
            bits |= sign;
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (mant << 13);
    } else {
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    std::memcpy(&f, &bits, 4);
    return f;
#endif
}

uint16_t f32_to_f16(float f) {
#if defined(__F16C__)
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
#else
    uint32_t x;
    std::memcpy(&x, &f, 4);
    const uint32_t sign = (x >> 16) & 0x8000;
    const uint32_t abs = x & 0x7fffffff;
    if (abs >= 0x7f800000) return (uint16_t)(sign | 0x7c00 | (abs > 0x7f800000 ? 0x200 : 0));
    if (abs >= 0x477ff000) return (uint16_t)(sign | 0x7c00);  // rounds to infinity
    if (abs < 0x38800000) {                                   // f16 subnormal or zero
        float v;
        std::memcpy(&v, &abs, 4);
        return (uint16_t)(sign | (uint32_t)std::nearbyint(v * 16777216.0f));
    }
    uint32_t mant = abs & 0x7fffff;
    uint32_t exp = (abs >> 23) - 112;
    uint32_t h = (exp << 10) | (mant >> 13);
    const uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++;
    return (uint16_t)(sign | h);
#endif
}

// The smallest and largest value of a 32-value block.
static void block_min_max(const float* g, float& gmin, float& gmax) {
    gmin = gmax = g[0];
    for (int j = 1; j < kBlockSize; j++) {
        gmax = std::fmax(gmax, g[j]);
        gmin = std::fmin(gmin, g[j]);
    }
}

void quantize_q40(const float* x, size_t n, BlockQ40* out) {
    for (size_t b = 0; b < n / kBlockSize; b++) {
        const float* g = x + b * kBlockSize;
        float gmin, gmax;
        block_min_max(g, gmin, gmax);
        const float d = (-gmin > gmax ? gmin : gmax) / -8.0f;
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = f32_to_f16(d);
        for (int j = 0; j < 16; j++) {
            float lo = g[j] * inv + 8.5f;
            float hi = g[j + 16] * inv + 8.5f;
            int qlo = (int)std::fmin(std::fmax(lo, 0.0f), 15.0f);
            int qhi = (int)std::fmin(std::fmax(hi, 0.0f), 15.0f);
            out[b].qs[j] = (uint8_t)(qlo | (qhi << 4));
        }
    }
}

// Round to the nearest integer, ties to even, for |v| < 2^22 (enough for quantization levels): adding and
// subtracting 1.5 * 2^23 leaves no fraction bits. Unlike std::nearbyint this vectorizes.
static inline float round_half_even(float v) {
    return (v + 12582912.0f) - 12582912.0f;
}

// Sum of 16 values by halving (short dependency chains, vector adds), destroying them.
static inline float sum16(float* a) {
    for (int w = 8; w >= 1; w /= 2)
        for (int j = 0; j < w; j++) a[j] += a[j + w];
    return a[0];
}

void quantize_q40_best_fit(const float* x, size_t n, size_t row_length, BlockQ40* out) {
    // Each value's error counts with weight sqrt(s2 + x^2), s2 the mean square of its row: large values,
    // which dominate the products, are kept closer (llama.cpp weighs its Q4_0 search the same way, times
    // an activation importance we do not have). Candidate scales put the value of largest magnitude m at
    // -(8 + 0.1 i), i = -10..10: below 8 the grid is coarser but reaches m; above 8, m is clipped to -8
    // but the grid is finer for the rest. For each rounding q the best d is the weighted least-squares
    // one, sum(w x q) / sum(w q q), rounded to f16; the weighted error is then
    // sum(w x x) - 2 d sum(w x q) + d d sum(w q q). The plain rule is the first candidate, so no block
    // ends up with a larger weighted error than quantize_q40 gives it.
    constexpr int kSteps = 10;
    for (size_t r0 = 0; r0 < n; r0 += row_length) {
        float s2 = 0.0f;
        for (size_t j = r0; j < r0 + row_length; j++) s2 += x[j] * x[j];
        s2 /= (float)row_length;
        for (size_t b = r0 / kBlockSize; b < (r0 + row_length) / kBlockSize; b++) {
            const float* g = x + b * kBlockSize;
            quantize_q40(g, kBlockSize, &out[b]);
            float gmin, gmax;
            block_min_max(g, gmin, gmax);
            const float m = -gmin > gmax ? gmin : gmax;
            if (m == 0.0f) continue;
            float w[kBlockSize], wx[kBlockSize], best_q[kBlockSize], q[kBlockSize], t[16], u[16];
            for (int j = 0; j < kBlockSize; j++) {
                w[j] = std::sqrt(s2 + g[j] * g[j]);
                wx[j] = w[j] * g[j];
            }
            for (int j = 0; j < 16; j++) {
                best_q[j] = (float)((out[b].qs[j] & 15) - 8);
                best_q[j + 16] = (float)((out[b].qs[j] >> 4) - 8);
            }
            // Element-wise products first, then the sums by halving: a shape the compiler vectorizes.
            for (int j = 0; j < 16; j++) t[j] = wx[j] * g[j] + wx[j + 16] * g[j + 16];
            const float swxx = sum16(t);
            uint16_t best_d = out[b].d;
            float best_err;
            {
                for (int j = 0; j < 16; j++) {
                    t[j] = wx[j] * best_q[j] + wx[j + 16] * best_q[j + 16];
                    u[j] = w[j] * best_q[j] * best_q[j] + w[j + 16] * best_q[j + 16] * best_q[j + 16];
                }
                const float d = f16_to_f32(best_d), swxq = sum16(t), swqq = sum16(u);
                best_err = swxx - 2.0f * d * swxq + d * d * swqq;
            }
            bool improved = false;
            for (int i = -kSteps; i <= kSteps; i++) {
                const float iscale = -(8.0f + 0.1f * (float)i) / m;
                for (int j = 0; j < kBlockSize; j++) {
                    const float r = round_half_even(g[j] * iscale);
                    q[j] = r < -8.0f ? -8.0f : (r > 7.0f ? 7.0f : r);
                }
                for (int j = 0; j < 16; j++) {
                    t[j] = wx[j] * q[j] + wx[j + 16] * q[j + 16];
                    u[j] = w[j] * q[j] * q[j] + w[j + 16] * q[j + 16] * q[j + 16];
                }
                const float swxq = sum16(t), swqq = sum16(u);
                if (swqq == 0.0f) continue;
                const uint16_t d16 = f32_to_f16(swxq / swqq);
                const float d = f16_to_f32(d16);
                const float err = swxx - 2.0f * d * swxq + d * d * swqq;
                if (err < best_err) {
                    best_err = err;
                    best_d = d16;
                    std::memcpy(best_q, q, sizeof(q));
                    improved = true;
                }
            }
            if (!improved) continue;
            out[b].d = best_d;
            for (int j = 0; j < 16; j++)
                out[b].qs[j] = (uint8_t)(((int)best_q[j] + 8) | (((int)best_q[j + 16] + 8) << 4));
        }
    }
}

void quantize_q80(const float* x, size_t n, BlockQ80* out) {
    for (size_t b = 0; b < n / kBlockSize; b++) {
        const float* g = x + b * kBlockSize;
        float gmin, gmax;
        block_min_max(g, gmin, gmax);
        const float amax = -gmin > gmax ? -gmin : gmax;
        const float d = amax / 127.0f;
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = f32_to_f16(d);
        for (int j = 0; j < kBlockSize; j++) out[b].qs[j] = (int8_t)std::nearbyint(g[j] * inv);
    }
}

void dequantize(FloatType type, const void* src, size_t n, float* dst) {
    switch (type) {
        case FloatType::F32:
            std::memcpy(dst, src, n * 4);
            return;
        case FloatType::F16: {
            const uint16_t* h = static_cast<const uint16_t*>(src);
            for (size_t i = 0; i < n; i++) dst[i] = f16_to_f32(h[i]);
            return;
        }
        case FloatType::Q40: {
            const BlockQ40* blocks = static_cast<const BlockQ40*>(src);
            for (size_t b = 0; b < n / kBlockSize; b++) {
                const float d = f16_to_f32(blocks[b].d);
                float* o = dst + b * kBlockSize;
                for (int j = 0; j < 16; j++) {
                    o[j] = (float)((blocks[b].qs[j] & 15) - 8) * d;
                    o[j + 16] = (float)((blocks[b].qs[j] >> 4) - 8) * d;
                }
            }
            return;
        }
        case FloatType::Q80: {
            const BlockQ80* blocks = static_cast<const BlockQ80*>(src);
            for (size_t b = 0; b < n / kBlockSize; b++) {
                const float d = f16_to_f32(blocks[b].d);
                for (int j = 0; j < kBlockSize; j++) dst[b * kBlockSize + j] = blocks[b].qs[j] * d;
            }
            return;
        }
    }
    throw std::invalid_argument("unknown float type");
}

}  // namespace dllama
