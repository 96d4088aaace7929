// AVX2 + FMA + F16C kernels over the 16-row group layout (matmul_kernels.h), for x86 CPUs without
// AVX-512 VNNI. Each 16-row quantity is handled as two ymm halves (rows 0..7 and 8..15).
//
// Q40: vpmaddubsw multiplies the unsigned nibbles by the signed activation bytes (pairs of at most
// 2*15*127, no saturation), vpmaddwd widens to int32; the accumulator starts at -8 * sum(x_q).
// Q80: the sign trick (|w| times x with w's sign) keeps vpmaddubsw's operands unsigned x signed.
#include "kernels/matmul_kernels.h"

#if defined(DLLAMA_MATMUL_AVX2)
#include <immintrin.h>

#include <cstring>

namespace dllama::kernels {

constexpr int kMaxTile = 4;  // tokens per pass (16 ymm registers: 8 weight vectors, 2 x T accumulators)
constexpr int64_t kPrefetchBytes = 4096;  // as tuned for the AVX-512 kernels

static inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

static inline __m256i broadcast_dword(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm256_set1_epi32(v);
}

static inline float hmax(__m256 v) {
    __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}

static inline int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}

template <int T>
static inline void store_rows(const __m256 (&acc)[2][T], float* y, int64_t ldy, int n_rows) {
    for (int t = 0; t < T; t++) {
        if (n_rows == kGroupRows) {
            _mm256_storeu_ps(y + t * ldy, acc[0][t]);
            _mm256_storeu_ps(y + t * ldy + 8, acc[1][t]);
        } else {
            float tmp[kGroupRows];
            _mm256_storeu_ps(tmp, acc[0][t]);
            _mm256_storeu_ps(tmp + 8, acc[1][t]);
            std::memcpy(y + t * ldy, tmp, n_rows * sizeof(float));
        }
    }
}

void quantize_x(const float* x, int64_t n_blocks, int8_t* qs, float* d, int32_t* sum) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256 sign_bit = _mm256_castsi256_ps(_mm256_set1_epi32((int)0x80000000u));
    for (int64_t b = 0; b < n_blocks; b++) {
        __m256 v[4];
        for (int k = 0; k < 4; k++) v[k] = _mm256_loadu_ps(x + b * kBlockSize + 8 * k);
        const __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v[0], abs_mask), _mm256_and_ps(v[1], abs_mask)),
                                       _mm256_max_ps(_mm256_and_ps(v[2], abs_mask), _mm256_and_ps(v[3], abs_mask)));
        const float scale = hmax(m) / 127.0f;
        const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
        d[b] = _cvtsh_ss(_cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT));
        // round(v) with ties away from zero, exactly: truncate, then step away from zero when the
        // (exact) fractional part is at least one half.
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            const __m256 s = _mm256_mul_ps(v[k], _mm256_set1_ps(inv));
            const __m256 t = _mm256_round_ps(s, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            const __m256 up = _mm256_cmp_ps(_mm256_and_ps(_mm256_sub_ps(s, t), abs_mask), _mm256_set1_ps(0.5f), _CMP_GE_OQ);
            const __m256 step = _mm256_or_ps(_mm256_and_ps(s, sign_bit), _mm256_set1_ps(1.0f));
            q[k] = _mm256_cvttps_epi32(_mm256_add_ps(t, _mm256_and_ps(up, step)));
        }
        sum[b] = hsum(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
        // Packing works per 128-bit lane; the final permute restores element order.
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qs + b * kBlockSize),
                            _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
}

// ---- f32 / f16 ----

template <int T, bool Half>
static void float_tile(const uint8_t* g, int64_t cols, const float* x, float* y, int64_t ldy, int n_rows) {
    constexpr int64_t col_bytes = (Half ? 2 : 4) * kGroupRows;
    __m256 acc[2][T];
    for (int t = 0; t < T; t++) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    for (int64_t c = 0; c < cols; c++) {
        const uint8_t* p = g + c * col_bytes;
        if (T == 1) prefetch(p + kPrefetchBytes);
        __m256 w[2];
        for (int h = 0; h < 2; h++)
            w[h] = Half ? _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(p + 16 * h)))
                        : _mm256_load_ps(reinterpret_cast<const float*>(p) + 8 * h);
        for (int t = 0; t < T; t++) {
            const __m256 xv = _mm256_broadcast_ss(x + t * cols + c);
            acc[0][t] = _mm256_fmadd_ps(w[0], xv, acc[0][t]);
            acc[1][t] = _mm256_fmadd_ps(w[1], xv, acc[1][t]);
        }
    }
    store_rows<T>(acc, y, ldy, n_rows);
}

void group_f32(const uint8_t* g, int64_t cols, const float* x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    token_tiles<kMaxTile>(n_tokens, [&](auto T, int t0) {
        float_tile<T, false>(g, cols, x + t0 * cols, y + t0 * ldy, ldy, n_rows);
    });
}

void group_f16(const uint8_t* g, int64_t cols, const float* x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    token_tiles<kMaxTile>(n_tokens, [&](auto T, int t0) {
        float_tile<T, true>(g, cols, x + t0 * cols, y + t0 * ldy, ldy, n_rows);
    });
}

// ---- Q40 / Q80 ----

// Adds d_w * d_x * (dot - offset * sum(x_q)) of one block and 8 rows for T tokens. w[k] holds the
// (unsigned) weights multiplying activation quants 4k..4k+3; with Signed, w[k] is |weight| and
// sign[k] the signed weights whose signs move onto the activations.
template <int T, int Offset, bool Signed>
static inline void block_dot(const __m256i (&w)[8], const __m256i (&sign)[8], __m256 dw, const QuantizedX& x,
                             int64_t first_block, __m256 (&acc)[T]) {
    const __m256i ones = _mm256_set1_epi16(1);
    for (int t = 0; t < T; t++) {
        const int64_t xb = first_block + t * x.nb;
        const int8_t* xs = x.qs + xb * kBlockSize;
        __m256i s = _mm256_set1_epi32(-Offset * x.sum[xb]);
        for (int k = 0; k < 8; k++) {
            __m256i xv = broadcast_dword(xs + 4 * k);
            if (Signed) xv = _mm256_sign_epi8(xv, sign[k]);
            s = _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(w[k], xv), ones));
        }
        acc[t] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(x.d[xb])), dw, acc[t]);
    }
}

template <int T>
static void q40_tile(const uint8_t* g, const QuantizedX& x, int t0, float* y, int64_t ldy, int n_rows) {
    const uint8_t* scales = g + x.nb * kQ40BlockBytes;
    const __m256i low = _mm256_set1_epi8(0x0F);
    __m256 acc[2][T];
    for (int t = 0; t < T; t++) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < x.nb; b++) {
        const uint8_t* q = g + b * kQ40BlockBytes;
        if (T == 1) {
            for (int l = 0; l < 4; l++) prefetch(q + kPrefetchBytes + 64 * l);
            prefetch(scales + b * 2 * kGroupRows + kPrefetchBytes / 8);
        }
        for (int h = 0; h < 2; h++) {
            // Chunk k's low nibbles are elements 4k..4k+3, its high nibbles 16+4k..16+4k+3.
            __m256i w[8];
            for (int k = 0; k < 4; k++) {
                const __m256i v = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 64 * k + 32 * h));
                w[k] = _mm256_and_si256(v, low);
                w[4 + k] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            }
            const __m256 dw = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(scales + b * 2 * kGroupRows + 16 * h)));
            block_dot<T, 8, false>(w, w, dw, x, t0 * x.nb + b, acc[h]);
        }
    }
    store_rows<T>(acc, y, ldy, n_rows);
}

template <int T>
static void q80_tile(const uint8_t* g, const QuantizedX& x, int t0, float* y, int64_t ldy, int n_rows) {
    const uint8_t* scales = g + x.nb * kQ80BlockBytes;
    __m256 acc[2][T];
    for (int t = 0; t < T; t++) acc[0][t] = acc[1][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < x.nb; b++) {
        const uint8_t* q = g + b * kQ80BlockBytes;
        if (T == 1) {
            for (int l = 0; l < 8; l++) prefetch(q + kPrefetchBytes + 64 * l);
            prefetch(scales + b * 2 * kGroupRows + kPrefetchBytes / 16);
        }
        for (int h = 0; h < 2; h++) {
            __m256i w[8], a[8];
            for (int k = 0; k < 8; k++) {
                w[k] = _mm256_load_si256(reinterpret_cast<const __m256i*>(q + 64 * k + 32 * h));
                a[k] = _mm256_abs_epi8(w[k]);
            }
            const __m256 dw = _mm256_cvtph_ps(_mm_load_si128(reinterpret_cast<const __m128i*>(scales + b * 2 * kGroupRows + 16 * h)));
            block_dot<T, 0, true>(a, w, dw, x, t0 * x.nb + b, acc[h]);
        }
    }
    store_rows<T>(acc, y, ldy, n_rows);
}

void group_q40(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    token_tiles<kMaxTile>(n_tokens, [&](auto T, int t0) { q40_tile<T>(g, x, t0, y + t0 * ldy, ldy, n_rows); });
}

void group_q80(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    token_tiles<kMaxTile>(n_tokens, [&](auto T, int t0) { q80_tile<T>(g, x, t0, y + t0 * ldy, ldy, n_rows); });
}

}  // namespace dllama::kernels
#endif
