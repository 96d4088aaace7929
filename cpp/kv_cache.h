// The KV cache: what every attention block keeps per position (keys and values, or latents), for a
// fixed number of sequence slots of up to seq_len positions each. Blocks hold only weights; the
// decoder hands each block its layer's tensors, and each row of a step names its slot and position.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/attention.h"

namespace dllama {

// One cached tensor of a block: n_heads heads of `width` values per position.
struct KvShape {
    int n_heads = 0, width = 0;
    KvLayout layout = KvLayout::Rows;
};

// One cached tensor for every slot: [slot][head][position][width] (head-major, so attention streams
// one head's history), in f32 or (to halve memory and bandwidth) f16. Memory is reserved for every
// slot's whole context, but the OS commits it only as positions are written, so unused slots and the
// unused end of each context cost address space, not memory.
class KvTensor {
public:
    KvTensor(const KvShape& shape, int n_slots, int seq_len, bool f16);
    // Writes the n_heads * width values of one position.
    void put(int slot, int pos, const float* values);
    KvHistory head(int slot, int head) const;
    // Positions 0..n_rows-1 of slot src into slot dst.
    void copy_rows(int src, int dst, int n_rows);
    size_t bytes_per_position() const { return (size_t)shape_.n_heads * shape_.width * element_bytes(); }

private:
    size_t element_bytes() const { return f16_ ? 2 : 4; }
    size_t head_offset(int slot, int head) const {  // in elements
        return ((size_t)slot * shape_.n_heads + head) * padded_rows_ * shape_.width;
    }
    // Anonymous memory: zero pages from the OS, committed page by page as positions are written.
    struct Reserved {
        void* data = nullptr;
        size_t bytes = 0;
        explicit Reserved(size_t bytes);
        Reserved(const Reserved&) = delete;
        Reserved& operator=(const Reserved&) = delete;
        ~Reserved();
    };
    KvShape shape_;
    int padded_rows_;  // seq_len rounded up to whole position blocks
    bool f16_;
    std::unique_ptr<Reserved> memory_;
};

class KvCache {
public:
    using Layer = std::vector<KvTensor>;  // one layer's tensors, in the order its block declared them
    KvCache() = default;
    KvCache(const std::vector<std::vector<KvShape>>& layer_shapes, int n_slots, int seq_len, bool f16);

    Layer& layer(int l) { return layers_[l]; }
    // Positions 0..n-1 of every layer's tensors, from slot src into slot dst.
    void copy_prefix(int src, int dst, int n);
    // Bytes one position of one slot takes in the first n_layers layers (-1: all).
    size_t bytes_per_position(int n_layers = -1) const;
    // Bytes reserved for all slots.
    size_t bytes() const { return bytes_per_position() * (size_t)seq_len_ * n_slots_; }

private:
    std::vector<Layer> layers_;
    int n_slots_ = 0, seq_len_ = 0;
};

}  // namespace dllama
