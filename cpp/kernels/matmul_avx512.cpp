// AVX-512 (F, BW, VL, VNNI) kernels over the 16-row group layout (matmul_kernels.h).
//
// One zmm holds one value per row of a group (f32 lanes), or four consecutive quants per row (dword
// lanes), so an activation scalar or 4-quant dword broadcast to all lanes feeds 16 rows at once.
// Quantized blocks: vpdpbusd multiplies unsigned weight bytes by signed activation bytes; the
// accumulator starts at -offset * sum(x_q) to cancel the weight offset (8 for Q40 nibbles, 128 for
// Q80 bytes stored XOR 0x80), then one FMA applies d_w * d_x per block.
//
// Tokens are processed in tiles (up to 16 for quantized weights, 8 for f32/f16, where 16 was measured
// 2x slower): each block of weights is loaded and unpacked once per tile. Every tile streams its
// weights with software prefetch far ahead (prefetch_bytes): without it a tile of 2-16 tokens (batched
// decode) ran 1.5-3x slower on this machine, the hardware prefetcher alone not keeping up.
#include "kernels/matmul_kernels.h"

#if defined(DLLAMA_MATMUL_AVX512)
#if defined(__GNUC__) && !defined(__clang__)
// GCC 12's own AVX-512 headers trip -Wmaybe-uninitialized (GCC bug 105593), drowning real warnings.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#include <immintrin.h>

#include <cstring>

namespace dllama::kernels {

// How far ahead of the loads a tile of T tokens prefetches. Measured on Zen 4 (Q40, 1 GiB), one token:
// none 18.5 GB/s on one core, 1 KiB 17.5, 2 KiB 18.4, 4 KiB 22, 8 KiB 18; 2 KiB into L2 (T1) 19. Tiles of
// 4-16 tokens (batched decode; 8 x 8192x2048 Q40, one thread, best of 30): 16 KiB ahead took 4.9-5.3 ms
// for 8 tokens where 4 KiB took 5.5-9.7 and 64 KiB 8.5-8.8, and 4 tokens ran as fast as one.
template <int T>
constexpr int64_t prefetch_bytes() {
    return T == 1 ? 4096 : 16384;
}

static inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

static inline __m512i broadcast_dword(const int8_t* p) {
    int32_t v;
    std::memcpy(&v, p, 4);
    return _mm512_set1_epi32(v);
}

template <int T>
static inline void store_rows(const __m512 (&acc)[T], float* y, int64_t ldy, int n_rows) {
    const __mmask16 m = (__mmask16)((1u << n_rows) - 1);
    for (int t = 0; t < T; t++) _mm512_mask_storeu_ps(y + t * ldy, m, acc[t]);
}

void quantize_x(const float* x, int64_t n_blocks, int8_t* qs, float* d, int32_t* sum) {
    const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
    const __m512i sign_bit = _mm512_set1_epi32((int)0x80000000u);
    const __m512i one = _mm512_castps_si512(_mm512_set1_ps(1.0f));
    for (int64_t b = 0; b < n_blocks; b++) {
        const __m512 v0 = _mm512_loadu_ps(x + b * kBlockSize), v1 = _mm512_loadu_ps(x + b * kBlockSize + 16);
        const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_and_ps(v0, abs_mask), _mm512_and_ps(v1, abs_mask)));
        const float scale = amax / 127.0f;
        const float inv = scale != 0.0f ? 1.0f / scale : 0.0f;
        d[b] = _cvtsh_ss(_cvtss_sh(scale, _MM_FROUND_TO_NEAREST_INT));
        // round(v) with ties away from zero, exactly: truncate, then step away from zero when the
        // (exact) fractional part is at least one half.
        auto round_away = [&](__m512 v) {
            v = _mm512_mul_ps(v, _mm512_set1_ps(inv));
            const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
            const __mmask16 up = _mm512_cmp_ps_mask(_mm512_and_ps(_mm512_sub_ps(v, t), abs_mask), _mm512_set1_ps(0.5f), _CMP_GE_OQ);
            const __m512 step = _mm512_castsi512_ps(_mm512_or_si512(_mm512_and_si512(_mm512_castps_si512(v), sign_bit), one));
            return _mm512_cvttps_epi32(_mm512_mask_add_ps(t, up, t, step));
        };
        const __m512i q0 = round_away(v0), q1 = round_away(v1);
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * kBlockSize), _mm512_cvtepi32_epi8(q0));
        _mm_storeu_si128(reinterpret_cast<__m128i*>(qs + b * kBlockSize + 16), _mm512_cvtepi32_epi8(q1));
        sum[b] = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
    }
}

// ---- f32 / f16: one FMA per column and token; the column's 16 weights are loaded once per tile ----

template <int T, bool Half>
static void float_tile(const uint8_t* g, int64_t cols, const float* x, float* y, int64_t ldy, int n_rows) {
    constexpr int64_t col_bytes = (Half ? 2 : 4) * kGroupRows;
    __m512 acc[T];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t c = 0; c < cols; c++) {
        const uint8_t* p = g + c * col_bytes;
        prefetch(p + prefetch_bytes<T>());
        const __m512 w = Half ? _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(p)))
                              : _mm512_load_ps(reinterpret_cast<const float*>(p));
        for (int t = 0; t < T; t++) acc[t] = _mm512_fmadd_ps(w, _mm512_set1_ps(x[t * cols + c]), acc[t]);
    }
    store_rows<T>(acc, y, ldy, n_rows);
}

void group_f32(const uint8_t* g, int64_t cols, const float* x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    token_tiles<8>(n_tokens, [&](auto T, int t0) {
        float_tile<T, false>(g, cols, x + t0 * cols, y + t0 * ldy, ldy, n_rows);
    });
}

void group_f16(const uint8_t* g, int64_t cols, const float* x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    token_tiles<8>(n_tokens, [&](auto T, int t0) {
        float_tile<T, true>(g, cols, x + t0 * cols, y + t0 * ldy, ldy, n_rows);
    });
}

// ---- Q40 / Q80 ----

// Adds d_w * d_x * (sum of products - offset * sum(x_q)) of one block for T tokens (block index
// first_block for the first, + nb per token). Weight register w[k] multiplies activation quants 4k..4k+3.
template <int T, int Offset>
static inline void block_dot(const __m512i (&w)[8], __m512 dw, const QuantizedX& x, int64_t first_block, __m512 (&acc)[T]) {
    for (int t = 0; t < T; t++) {
        const int64_t xb = first_block + t * x.nb;
        const int8_t* xs = x.qs + xb * kBlockSize;
        __m512i s = _mm512_set1_epi32(-Offset * x.sum[xb]);
        for (int k = 0; k < 8; k++) s = _mm512_dpbusd_epi32(s, w[k], broadcast_dword(xs + 4 * k));
        acc[t] = _mm512_fmadd_ps(_mm512_mul_ps(_mm512_cvtepi32_ps(s), _mm512_set1_ps(x.d[xb])), dw, acc[t]);
    }
}

template <int T>
static void q40_tile(const uint8_t* g, const QuantizedX& x, int t0, float* y, int64_t ldy, int n_rows) {
    const uint8_t* scales = g + x.nb * kQ40BlockBytes;
    const __m512i low = _mm512_set1_epi8(0x0F);
    __m512 acc[T];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < x.nb; b++) {
        const uint8_t* q = g + b * kQ40BlockBytes;
        for (int l = 0; l < 4; l++) prefetch(q + prefetch_bytes<T>() + 64 * l);
        prefetch(scales + b * 2 * kGroupRows + prefetch_bytes<T>() / 8);
        // Chunk k's low nibbles are elements 4k..4k+3, its high nibbles 16+4k..16+4k+3.
        __m512i w[8];
        for (int k = 0; k < 4; k++) {
            const __m512i v = _mm512_load_si512(q + 64 * k);
            w[k] = _mm512_and_si512(v, low);
            w[4 + k] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(scales + b * 2 * kGroupRows)));
        block_dot<T, 8>(w, dw, x, t0 * x.nb + b, acc);
    }
    store_rows<T>(acc, y, ldy, n_rows);
}

template <int T>
static void q80_tile(const uint8_t* g, const QuantizedX& x, int t0, float* y, int64_t ldy, int n_rows) {
    const uint8_t* scales = g + x.nb * kQ80BlockBytes;
    __m512 acc[T];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < x.nb; b++) {
        const uint8_t* q = g + b * kQ80BlockBytes;
        for (int l = 0; l < 8; l++) prefetch(q + prefetch_bytes<T>() + 64 * l);
        prefetch(scales + b * 2 * kGroupRows + prefetch_bytes<T>() / 16);
        __m512i w[8];
        for (int k = 0; k < 8; k++) w[k] = _mm512_load_si512(q + 64 * k);
        const __m512 dw = _mm512_cvtph_ps(_mm256_load_si256(reinterpret_cast<const __m256i*>(scales + b * 2 * kGroupRows)));
        block_dot<T, 128>(w, dw, x, t0 * x.nb + b, acc);
    }
    store_rows<T>(acc, y, ldy, n_rows);
}

void group_q40(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    token_tiles<16>(n_tokens, [&](auto T, int t0) { q40_tile<T>(g, x, t0, y + t0 * ldy, ldy, n_rows); });
}

void group_q80(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows) {
    token_tiles<16>(n_tokens, [&](auto T, int t0) { q80_tile<T>(g, x, t0, y + t0 * ldy, ldy, n_rows); });
}

}  // namespace dllama::kernels
#endif
