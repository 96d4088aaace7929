// Reference kernels: plain loops, correct for every type. Replaced by SIMD paths where available.
#include "kernels/matmul.h"

#include <cmath>
#include <cstring>
#include <stdexcept>

#include "quants.h"

namespace dllama {

struct Matrix::Storage {
    std::vector<uint8_t> bytes;
};

struct Activations::Quantized {
    std::vector<BlockQ80> blocks;  // n_tokens x cols/32
};

Matrix::Matrix(FloatType type, int64_t rows, int64_t cols, const void* data)
    : type_(type), rows_(rows), cols_(cols), storage_(std::make_shared<Storage>()) {
    if (is_quantized(type) && cols % kBlockSize != 0)
        throw std::invalid_argument("quantized matrix needs a multiple of 32 columns, got " + std::to_string(cols));
    const size_t n = bytes();
    storage_->bytes.resize(n);
    std::memcpy(storage_->bytes.data(), data, n);
}

void Matrix::dequantize_row(int64_t r, float* out) const {
    const size_t row_bytes = bytes_of(type_, cols_);
    dequantize(type_, storage_->bytes.data() + r * row_bytes, cols_, out);
}

void Activations::set(const float* x, int n_tokens, int64_t cols) {
    x_ = x;
    n_tokens_ = n_tokens;
    cols_ = cols;
    q80_ready_ = false;
}

static void quantize_activation_q80(const float* x, int64_t n, BlockQ80* out) {
    for (int64_t b = 0; b < n / kBlockSize; b++) {
        const float* g = x + b * kBlockSize;
        float amax = 0.0f;
        for (int j = 0; j < kBlockSize; j++) amax = std::fmax(amax, std::fabs(g[j]));
        const float d = amax / 127.0f;
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = f32_to_f16(d);
        for (int j = 0; j < kBlockSize; j++) out[b].qs[j] = (int8_t)std::round(g[j] * inv);
    }
}

const Activations::Quantized& Activations::q80(ThreadPool& pool) {
    if (!q80_) q80_ = std::make_shared<Quantized>();
    if (!q80_ready_) {
        const int64_t nb = cols_ / kBlockSize;
        q80_->blocks.resize((size_t)n_tokens_ * nb);
        pool.parallel_for(n_tokens_, 1, [&](size_t t0, size_t t1, int) {
            for (size_t t = t0; t < t1; t++) quantize_activation_q80(x_ + t * cols_, cols_, &q80_->blocks[t * nb]);
        });
        q80_ready_ = true;
    }
    return *q80_;
}

static float dot_f32(const float* w, const float* x, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += w[i] * x[i];
    return s;
}

static float dot_f16(const uint16_t* w, const float* x, int64_t n) {
    float s = 0.0f;
    for (int64_t i = 0; i < n; i++) s += f16_to_f32(w[i]) * x[i];
    return s;
}

static float dot_q40_q80(const BlockQ40* w, const BlockQ80* x, int64_t nb) {
    float s = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t acc = 0;
        for (int j = 0; j < 16; j++) {
            acc += ((w[b].qs[j] & 15) - 8) * x[b].qs[j];
            acc += ((w[b].qs[j] >> 4) - 8) * x[b].qs[j + 16];
        }
        s += (float)acc * f16_to_f32(w[b].d) * f16_to_f32(x[b].d);
    }
    return s;
}

static float dot_q80_q80(const BlockQ80* w, const BlockQ80* x, int64_t nb) {
    float s = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        int32_t acc = 0;
        for (int j = 0; j < kBlockSize; j++) acc += w[b].qs[j] * x[b].qs[j];
        s += (float)acc * f16_to_f32(w[b].d) * f16_to_f32(x[b].d);
    }
    return s;
}

void matmul(const Matrix& w, Activations& x, float* y, ThreadPool& pool) {
    if (x.cols() != w.cols())
        throw std::invalid_argument("matmul: input has " + std::to_string(x.cols()) + " columns, weight has " +
                                    std::to_string(w.cols()));
    const int64_t rows = w.rows(), cols = w.cols();
    const int n = x.n_tokens();
    const uint8_t* base = w.storage_->bytes.data();
    const size_t row_bytes = bytes_of(w.type(), cols);
    const BlockQ80* xq = is_quantized(w.type()) ? x.q80(pool).blocks.data() : nullptr;
    const int64_t nb = cols / kBlockSize;
    pool.parallel_for(rows, 16, [&](size_t r0, size_t r1, int) {
        for (int t = 0; t < n; t++) {
            for (size_t r = r0; r < r1; r++) {
                const uint8_t* row = base + r * row_bytes;
                float v = 0.0f;
                switch (w.type()) {
                    case FloatType::F32: v = dot_f32((const float*)row, x.f32() + (size_t)t * cols, cols); break;
                    case FloatType::F16: v = dot_f16((const uint16_t*)row, x.f32() + (size_t)t * cols, cols); break;
                    case FloatType::Q40: v = dot_q40_q80((const BlockQ40*)row, xq + (size_t)t * nb, nb); break;
                    case FloatType::Q80: v = dot_q80_q80((const BlockQ80*)row, xq + (size_t)t * nb, nb); break;
                }
                y[(size_t)t * rows + r] = v;
            }
        }
    });
}

}  // namespace dllama
