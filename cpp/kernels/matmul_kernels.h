// Private to the matmul implementation: the repacked weight layout and the per-ISA kernels.
//
// Weights are repacked at load into groups of kGroupRows = 16 consecutive output rows (the last
// group padded with zero rows). Each group is one contiguous, 64-byte aligned stream, so a thread
// reads its rows front to back and one vector lane (or dword lane) always belongs to one row: an
// activation value is loaded once and feeds 16 rows, and no horizontal sums are needed.
//
//   F32: column c of the group = 16 floats (row i at lane i): cols x 64 bytes.
//   F16: the same with f16 values: cols x 32 bytes.
//   Q40: nb = cols/32 blocks of 256 quant bytes, then nb x 16 f16 scales (block b, row i at 16b+i).
//        Quant block b = 4 chunks of 64 bytes; in chunk k, bytes 4i..4i+3 are row i's qs[4k..4k+3].
//        The low nibbles of chunk k are row elements 4k..4k+3, the high nibbles 16+4k..16+4k+3, so
//        one dword of the activation block broadcast to all lanes lines up with every row.
//        Nibbles stay unsigned (0..15): the -8 offset is applied once per block as -8 * sum(x_q).
//   Q80: nb blocks of 512 quant bytes (8 chunks of 64 bytes, same dword interleave), then the scales.
//        With VNNI the bytes are stored XOR 0x80 (= q + 128, unsigned for vpdpbusd) and the offset
//        is removed as -128 * sum(x_q).
#pragma once
#include <cstdint>
#include <type_traits>

#include "tensor.h"

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512VNNI__) && \
    defined(__F16C__) && defined(__FMA__)
#define DLLAMA_MATMUL_AVX512 1
#elif defined(__AVX2__) && defined(__F16C__) && defined(__FMA__)
#define DLLAMA_MATMUL_AVX2 1
#else
#define DLLAMA_MATMUL_SCALAR 1
#endif

namespace dllama::kernels {

constexpr int kGroupRows = 16;
constexpr int64_t kQ40BlockBytes = 16 * kGroupRows;  // quant bytes of one block across the group
constexpr int64_t kQ80BlockBytes = 32 * kGroupRows;

#if defined(DLLAMA_MATMUL_AVX512)
constexpr uint8_t kQ80Xor = 0x80;
#else
constexpr uint8_t kQ80Xor = 0x00;
#endif

// Bytes of one group of `cols` columns (a multiple of 64 so every group starts cache-line aligned).
inline int64_t group_bytes(FloatType type, int64_t cols) {
    const int64_t nb = cols / kBlockSize;
    int64_t n = 0;
    switch (type) {
        case FloatType::F32: n = cols * 4 * kGroupRows; break;
        case FloatType::F16: n = cols * 2 * kGroupRows; break;
        case FloatType::Q40: n = nb * (kQ40BlockBytes + 2 * kGroupRows); break;
        case FloatType::Q80: n = nb * (kQ80BlockBytes + 2 * kGroupRows); break;
    }
    return (n + 63) / 64 * 64;
}

// Activations quantized to Q80, structure of arrays: block i is token i / nb, column block i % nb.
struct QuantizedX {
    const int8_t* qs;    // 32 per block
    const float* d;      // scale (the f16 value, widened)
    const int32_t* sum;  // sum of the block's 32 quants (for the weight offset)
    int64_t nb;          // blocks per token
};

// Runs tile(std::integral_constant<int, T>{}, t0) over n tokens: tiles of MaxTile, then halving sizes
// down to 1, so each kernel is instantiated for a few fixed tile sizes with its accumulators in registers.
template <int MaxTile, typename F>
inline void token_tiles(int n, F&& tile) {
    int t = 0;
    for (; t + MaxTile <= n; t += MaxTile) tile(std::integral_constant<int, MaxTile>{}, t);
    if constexpr (MaxTile > 1) {
        if (t < n) token_tiles<MaxTile / 2>(n - t, [&](auto T, int t0) { tile(T, t + t0); });
    }
}

// Quantizes n_blocks blocks of 32 floats: d = amax/127 rounded to f16, q = round(x/d) (ties away from zero).
void quantize_x(const float* x, int64_t n_blocks, int8_t* qs, float* d, int32_t* sum);

// One group times n_tokens tokens: y[t*ldy + i] for t < n_tokens and rows i < n_rows (<= 16).
// Float kernels read token t at x + t*cols.
void group_f32(const uint8_t* g, int64_t cols, const float* x, int n_tokens, float* y, int64_t ldy, int n_rows);
void group_f16(const uint8_t* g, int64_t cols, const float* x, int n_tokens, float* y, int64_t ldy, int n_rows);
void group_q40(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows);
void group_q80(const uint8_t* g, const QuantizedX& x, int n_tokens, float* y, int64_t ldy, int n_rows);

}  // namespace dllama::kernels
