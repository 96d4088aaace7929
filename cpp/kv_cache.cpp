#include "kv_cache.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

#include "quants.h"

namespace dllama {

KvTensor::Reserved::Reserved(size_t n) : bytes(n == 0 ? 1 : n) {
    data = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (data == MAP_FAILED)
        throw std::runtime_error("cannot reserve " + std::to_string(bytes / 1000000) +
                                 " MB for the KV cache (lower max_seq_len or max_sequences)");
}

KvTensor::Reserved::~Reserved() { ::munmap(data, bytes); }

KvTensor::KvTensor(const KvShape& shape, int n_slots, int seq_len, bool f16)
    : shape_(shape), padded_rows_((seq_len + kPositionBlock - 1) / kPositionBlock * kPositionBlock), f16_(f16) {
    const size_t n = (size_t)n_slots * shape.n_heads * padded_rows_ * shape.width;
    memory_ = std::make_unique<Reserved>(n * element_bytes());
}

void KvTensor::put(int slot, int pos, const float* values) {
    const int width = shape_.width;
    // Value d of the position lies at first + d * stride within each head's history.
    const size_t first = kv_index(shape_.layout, width, pos, 0);
    const size_t stride = kv_index(shape_.layout, width, pos, 1) - first;
    for (int h = 0; h < shape_.n_heads; h++) {
        const size_t base = head_offset(slot, h) + first;
        const float* v = values + (size_t)h * width;
        if (f16_) {
            uint16_t* dst = static_cast<uint16_t*>(memory_->data) + base;
            for (int d = 0; d < width; d++) dst[d * stride] = f32_to_f16(v[d]);
        } else {
            float* dst = static_cast<float*>(memory_->data) + base;
            for (int d = 0; d < width; d++) dst[d * stride] = v[d];
        }
    }
}

KvHistory KvTensor::head(int slot, int head) const {
    KvHistory h;
    const size_t base = head_offset(slot, head);
    if (f16_) h.f16 = static_cast<const uint16_t*>(memory_->data) + base;
    else h.f32 = static_cast<const float*>(memory_->data) + base;
    h.width = shape_.width;
    h.layout = shape_.layout;
    return h;
}

void KvTensor::copy_rows(int src, int dst, int n_rows) {
    if (src == dst || n_rows <= 0) return;
    // Whole position blocks: the tail of the last one holds positions dst overwrites before reading.
    const int rows = (n_rows + kPositionBlock - 1) / kPositionBlock * kPositionBlock;
    const size_t bytes = (size_t)rows * shape_.width * element_bytes();
    char* base = static_cast<char*>(memory_->data);
    for (int h = 0; h < shape_.n_heads; h++)
        std::memcpy(base + head_offset(dst, h) * element_bytes(), base + head_offset(src, h) * element_bytes(), bytes);
}

KvCache::KvCache(const std::vector<std::vector<KvShape>>& layer_shapes, int n_slots, int seq_len, bool f16)
    : n_slots_(n_slots), seq_len_(seq_len) {
    for (const auto& shapes : layer_shapes) {
        Layer layer;
        for (const KvShape& s : shapes) layer.emplace_back(s, n_slots, seq_len, f16);
        layers_.push_back(std::move(layer));
    }
}

void KvCache::copy_prefix(int src, int dst, int n) {
    for (Layer& layer : layers_)
        for (KvTensor& t : layer) t.copy_rows(src, dst, n);
}

size_t KvCache::bytes_per_position(int n_layers) const {
    size_t total = 0;
    const size_t n = n_layers < 0 ? layers_.size() : std::min(layers_.size(), (size_t)n_layers);
    for (size_t l = 0; l < n; l++)
        for (const KvTensor& t : layers_[l]) total += t.bytes_per_position();
    return total;
}

}  // namespace dllama
