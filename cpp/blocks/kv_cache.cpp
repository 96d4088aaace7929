#include "blocks/kv_cache.h"

#include <algorithm>
#include "kernels/ops.h"
#include "quants.h"

namespace dllama {

KvCache::KvCache(int rows, int n_heads, int head_width, bool f16)
    : rows_(rows), n_heads_(n_heads), width_(head_width), f16_(f16) {
    const size_t n = (size_t)rows * n_heads * head_width;
    if (f16) half_.assign(n, 0);
    else f32_.assign(n, 0.0f);
}

void KvCache::put(int row, const float* values) {
    for (int h = 0; h < n_heads_; h++) {
        const float* v = values + (size_t)h * width_;
        if (f16_)
            for (int i = 0; i < width_; i++) half_[at(h, row) + i] = f32_to_f16(v[i]);
        else
            std::copy(v, v + width_, &f32_[at(h, row)]);
    }
}

float KvCache::dot(int head, int row, const float* q) const {
    return f16_ ? dot_f16(q, &half_[at(head, row)], width_) : dllama::dot(q, &f32_[at(head, row)], width_);
}

void KvCache::axpy(float* y, float a, int head, int row) const {
    if (f16_) axpy_f16(y, a, &half_[at(head, row)], width_);
    else dllama::axpy(y, a, &f32_[at(head, row)], width_);
}

// A row converted from f16 once serves every query head of a group (at most kMaxRow values).
static constexpr int kMaxRow = 512;

void KvCache::dot_heads(int head, int row, const float* q, int q_stride, int n_q, float* out, int out_stride) const {
    if (f16_ && (n_q == 1 || width_ > kMaxRow)) {
        for (int i = 0; i < n_q; i++) out[i * out_stride] = dot(head, row, q + i * q_stride);
        return;
    }
    float buf[kMaxRow];
    const float* x = f16_ ? buf : &f32_[at(head, row)];
    if (f16_) f16_to_f32_row(&half_[at(head, row)], buf, width_);
    for (int i = 0; i < n_q; i++) out[i * out_stride] = dllama::dot(q + i * q_stride, x, width_);
}

void KvCache::axpy_heads(float* y, int y_stride, const float* a, int a_stride, int n_q, int head, int row) const {
    if (f16_ && (n_q == 1 || width_ > kMaxRow)) {
        for (int i = 0; i < n_q; i++) axpy(y + i * y_stride, a[i * a_stride], head, row);
        return;
    }
    float buf[kMaxRow];
    const float* x = f16_ ? buf : &f32_[at(head, row)];
    if (f16_) f16_to_f32_row(&half_[at(head, row)], buf, width_);
    for (int i = 0; i < n_q; i++) dllama::axpy(y + i * y_stride, a[i * a_stride], x, width_);
}

}  // namespace dllama
