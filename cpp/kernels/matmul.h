// Matrix-vector and matrix-matrix products over weights in any .m storage type.
//
// y[t][r] = sum_c W[r][c] * x[t][c]  for t < n_tokens, r < rows.
// F32 and F16 weights multiply f32 activations; Q40 and Q80 weights multiply activations quantized
// to Q80 (32-element blocks, f16 scale, round half away from zero), the way distributed-llama does.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "tensor.h"
#include "thread_pool.h"

namespace dllama {

// A weight matrix [rows x cols], copied out of the model file into the layout the kernels want.
class Matrix {
public:
    Matrix() = default;
    // `data` holds rows x cols values in the .m layout: row-major, Q40/Q80 blocks along each row.
    Matrix(FloatType type, int64_t rows, int64_t cols, const void* data);

    FloatType type() const { return type_; }
    int64_t rows() const { return rows_; }
    int64_t cols() const { return cols_; }
    bool empty() const { return rows_ == 0; }
    // Bytes of weights one full product reads (what decode streams from memory).
    size_t bytes() const { return bytes_of(type_, (size_t)rows_ * cols_); }
    // Row r as f32 (for embedding lookups from a quantized table).
    void dequantize_row(int64_t r, float* out) const;

    struct Storage;

private:
    FloatType type_ = FloatType::F32;
    int64_t rows_ = 0, cols_ = 0;
    std::shared_ptr<Storage> storage_;
    friend void matmul(const Matrix&, class Activations&, float*, ThreadPool&);
};

// Activations [n_tokens x cols] in f32, plus the Q80 copy quantized weights need, made once and
// shared by every matmul that reads the same input (q, k and v; gate and up).
class Activations {
public:
    // Points at x (not copied): x must stay unchanged until the next set().
    void set(const float* x, int n_tokens, int64_t cols);
    int n_tokens() const { return n_tokens_; }
    int64_t cols() const { return cols_; }
    const float* f32() const { return x_; }

    struct Quantized;
    const Quantized& q80(ThreadPool& pool);

private:
    const float* x_ = nullptr;
    int n_tokens_ = 0;
    int64_t cols_ = 0;
    bool q80_ready_ = false;
    std::shared_ptr<Quantized> q80_;
};

// y must hold n_tokens x w.rows() floats.
void matmul(const Matrix& w, Activations& x, float* y, ThreadPool& pool);

}  // namespace dllama
