// f16 conversion and the Q40/Q80 quantizers of the .m format.
#pragma once
#include "tensor.h"

namespace dllama {

float f16_to_f32(uint16_t h);
uint16_t f32_to_f16(float f);  // round to nearest even, like numpy's float16 cast

// The converter's quantizers. They follow distributed-llama's writer exactly (float32 arithmetic,
// multiply by the reciprocal scale; Q40 truncates x/d + 8.5, Q80 rounds half to even), so our files are
// byte-identical to theirs. n must be a multiple of 32.
void quantize_q40(const float* x, size_t n, BlockQ40* out);
void quantize_q80(const float* x, size_t n, BlockQ80* out);

// Q40 with each block's scale searched to minimise the block's weighted squared error (the same block
// format: only the choice of d and the nibbles differs); x holds rows of row_length values (a multiple
// of 32, dividing n). Never worse than quantize_q40 on any block by that measure.
void quantize_q40_best_fit(const float* x, size_t n, size_t row_length, BlockQ40* out);

// Any stored type back to f32.
void dequantize(FloatType type, const void* src, size_t n, float* dst);

}  // namespace dllama
