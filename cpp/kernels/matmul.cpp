// Matrix storage (repacked into 16-row groups, see matmul_kernels.h), activation quantization and
// the threaded driver. The arithmetic lives in matmul_avx512.cpp / matmul_avx2.cpp / matmul_scalar.cpp.
#include "kernels/matmul.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels/matmul_kernels.h"
#include "quants.h"

namespace dllama {

using kernels::kGroupRows;

struct Matrix::Storage {
    uint8_t* data = nullptr;
    int64_t group_bytes = 0;
    ~Storage() { std::free(data); }
};

struct Activations::Quantized {
    std::vector<int8_t> qs;
    std::vector<float> d;
    std::vector<int32_t> sum;
};

// Zeroed, 64-byte aligned memory. Large buffers are 2 MiB aligned and asked to use transparent huge
// pages: a GEMV streams them once per token, and TLB misses are dear under nested paging.
static uint8_t* alloc_weights(size_t n) {
    const size_t huge = size_t(2) << 20;
    const size_t align = n >= 2 * huge ? huge : 64;
    const size_t size = (n + align - 1) / align * align;
    void* p = std::aligned_alloc(align, size);
    if (!p) throw std::bad_alloc();
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (align == huge) madvise(p, size, MADV_HUGEPAGE);
#endif
    std::memset(p, 0, size);
    return static_cast<uint8_t*>(p);
}

Matrix::Matrix(FloatType type, int64_t rows, int64_t cols, const void* data)
    : type_(type), rows_(rows), cols_(cols), storage_(std::make_shared<Storage>()) {
    if (is_quantized(type) && cols % kBlockSize != 0)
        throw std::invalid_argument("quantized matrix needs a multiple of 32 columns, got " + std::to_string(cols));
    const int64_t gb = kernels::group_bytes(type, cols);
    const int64_t n_groups = (rows + kGroupRows - 1) / kGroupRows;
    storage_->group_bytes = gb;
    storage_->data = alloc_weights((size_t)(n_groups * gb));

    const uint8_t* src = static_cast<const uint8_t*>(data);
    const size_t row_bytes = bytes_of(type, cols);
    const int64_t nb = cols / kBlockSize;
    for (int64_t r = 0; r < rows; r++) {
        const uint8_t* in = src + r * row_bytes;
        uint8_t* g = storage_->data + r / kGroupRows * gb;
        const int i = r % kGroupRows;
        switch (type) {
            case FloatType::F32:
                for (int64_t c = 0; c < cols; c++) std::memcpy(g + (c * kGroupRows + i) * 4, in + c * 4, 4);
                break;
            case FloatType::F16:
                for (int64_t c = 0; c < cols; c++) std::memcpy(g + (c * kGroupRows + i) * 2, in + c * 2, 2);
                break;
            case FloatType::Q40:
                for (int64_t b = 0; b < nb; b++) {
                    const BlockQ40* blk = reinterpret_cast<const BlockQ40*>(in) + b;
                    for (int k = 0; k < 4; k++) std::memcpy(g + b * kernels::kQ40BlockBytes + k * 64 + i * 4, blk->qs + 4 * k, 4);
                    std::memcpy(g + nb * kernels::kQ40BlockBytes + (b * kGroupRows + i) * 2, &blk->d, 2);
                }
                break;
            case FloatType::Q80:
                for (int64_t b = 0; b < nb; b++) {
                    const BlockQ80* blk = reinterpret_cast<const BlockQ80*>(in) + b;
                    uint8_t* q = g + b * kernels::kQ80BlockBytes + i * 4;
                    for (int k = 0; k < 8; k++)
                        for (int e = 0; e < 4; e++) q[k * 64 + e] = (uint8_t)blk->qs[4 * k + e] ^ kernels::kQ80Xor;
                    std::memcpy(g + nb * kernels::kQ80BlockBytes + (b * kGroupRows + i) * 2, &blk->d, 2);
                }
                break;
        }
    }
}

void Matrix::dequantize_row(int64_t r, float* out) const {
    const uint8_t* g = storage_->data + r / kGroupRows * storage_->group_bytes;
    const int i = r % kGroupRows;
    const int64_t nb = cols_ / kBlockSize;
    auto scale = [&](int64_t block_bytes, int64_t b) {
        uint16_t h;
        std::memcpy(&h, g + nb * block_bytes + (b * kGroupRows + i) * 2, 2);
        return f16_to_f32(h);
    };
    switch (type_) {
        case FloatType::F32:
            for (int64_t c = 0; c < cols_; c++) std::memcpy(out + c, g + (c * kGroupRows + i) * 4, 4);
            return;
        case FloatType::F16:
            for (int64_t c = 0; c < cols_; c++) {
                uint16_t h;
                std::memcpy(&h, g + (c * kGroupRows + i) * 2, 2);
                out[c] = f16_to_f32(h);
            }
            return;
        case FloatType::Q40:
            for (int64_t b = 0; b < nb; b++) {
                const float d = scale(kernels::kQ40BlockBytes, b);
                for (int j = 0; j < 16; j++) {
                    const uint8_t q = g[b * kernels::kQ40BlockBytes + j / 4 * 64 + i * 4 + j % 4];
                    out[b * kBlockSize + j] = (float)((q & 15) - 8) * d;
                    out[b * kBlockSize + j + 16] = (float)((q >> 4) - 8) * d;
                }
            }
            return;
        case FloatType::Q80:
            for (int64_t b = 0; b < nb; b++) {
                const float d = scale(kernels::kQ80BlockBytes, b);
                for (int j = 0; j < kBlockSize; j++) {
                    const uint8_t q = g[b * kernels::kQ80BlockBytes + j / 4 * 64 + i * 4 + j % 4] ^ kernels::kQ80Xor;
                    out[b * kBlockSize + j] = (float)(int8_t)q * d;
                }
            }
            return;
    }
}

void Activations::set(const float* x, int n_tokens, int64_t cols) {
    x_ = x;
    n_tokens_ = n_tokens;
    cols_ = cols;
    q80_ready_ = false;
}

const Activations::Quantized& Activations::q80(ThreadPool& pool) {
    if (!q80_) q80_ = std::make_shared<Quantized>();
    if (!q80_ready_) {
        const size_t n_blocks = (size_t)n_tokens_ * (cols_ / kBlockSize);
        q80_->qs.resize(n_blocks * kBlockSize);
        q80_->d.resize(n_blocks);
        q80_->sum.resize(n_blocks);
        // ~1 ns per block: split only when there is enough work to pay for waking a thread.
        pool.parallel_for(n_blocks, 1024, [&](size_t b0, size_t b1, int) {
            kernels::quantize_x(x_ + b0 * kBlockSize, (int64_t)(b1 - b0), q80_->qs.data() + b0 * kBlockSize,
                                q80_->d.data() + b0, q80_->sum.data() + b0);
        });
        q80_ready_ = true;
    }
    return *q80_;
}

void matmul(const Matrix& w, Activations& x, float* y, ThreadPool& pool) {
    if (x.cols() != w.cols())
        throw std::invalid_argument("matmul: input has " + std::to_string(x.cols()) + " columns, weight has " +
                                    std::to_string(w.cols()));
    const int64_t rows = w.rows(), cols = w.cols();
    const int n = x.n_tokens();
    const uint8_t* base = w.storage_->data;
    const int64_t gb = w.storage_->group_bytes;
    kernels::QuantizedX xq{};
    if (is_quantized(w.type())) {
        const Activations::Quantized& q = x.q80(pool);
        xq = {q.qs.data(), q.d.data(), q.sum.data(), cols / kBlockSize};
    }
    // Threads take contiguous runs of groups, so each streams one region of memory; inside a group
    // the kernels loop over tiles of tokens, reusing the group's weights from cache.
    const int64_t n_groups = (rows + kGroupRows - 1) / kGroupRows;
    pool.parallel_for(n_groups, 1, [&](size_t g0, size_t g1, int) {
        for (size_t g = g0; g < g1; g++) {
            const uint8_t* gp = base + g * gb;
            const int n_rows = (int)std::min<int64_t>(kGroupRows, rows - (int64_t)g * kGroupRows);
            float* yg = y + g * kGroupRows;
            switch (w.type()) {
                case FloatType::F32: kernels::group_f32(gp, cols, x.f32(), n, yg, rows, n_rows); break;
                case FloatType::F16: kernels::group_f16(gp, cols, x.f32(), n, yg, rows, n_rows); break;
                case FloatType::Q40: kernels::group_q40(gp, xq, n, yg, rows, n_rows); break;
                case FloatType::Q80: kernels::group_q80(gp, xq, n, yg, rows, n_rows); break;
            }
        }
    });
}

}  // namespace dllama
