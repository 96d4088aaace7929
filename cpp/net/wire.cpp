#include "wire.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>

namespace dllama::net {

namespace {

void put_le(std::vector<uint8_t>& buf, uint64_t v, int n_bytes) {
    for (int i = 0; i < n_bytes; i++) buf.push_back((uint8_t)(v >> (8 * i)));
}

uint64_t get_le(const uint8_t* p, int n_bytes) {
    uint64_t v = 0;
    for (int i = 0; i < n_bytes; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

}  // namespace

void Writer::u8(uint8_t v) { buf_.push_back(v); }
void Writer::u32(uint32_t v) { put_le(buf_, v, 4); }
void Writer::u64(uint64_t v) { put_le(buf_, v, 8); }
void Writer::i32(int32_t v) { put_le(buf_, (uint32_t)v, 4); }

void Writer::f32(float v) {
    uint32_t bits;
    std::memcpy(&bits, &v, 4);
    u32(bits);
}

void Writer::bytes(const void* data, size_t n) {
    const uint8_t* p = static_cast<const uint8_t*>(data);
    buf_.insert(buf_.end(), p, p + n);
}

void Writer::string(const std::string& s) {
    if (s.size() > kMaxStringBytes) {
        throw std::invalid_argument("string of " + std::to_string(s.size()) + " bytes is too long to send");
    }
    u32((uint32_t)s.size());
    bytes(s.data(), s.size());
}

Reader::Reader(const void* data, size_t size) : data_(static_cast<const uint8_t*>(data)), size_(size) {}

const uint8_t* Reader::take(size_t n, const char* what) {
    if (n > remaining()) {
        throw ProtocolError("truncated message: " + std::string(what) + " needs " + std::to_string(n) +
                            " bytes but only " + std::to_string(remaining()) + " are left");
    }
    const uint8_t* p = data_ + pos_;
    pos_ += n;
    return p;
}

uint8_t Reader::u8(const char* what) { return *take(1, what); }
uint32_t Reader::u32(const char* what) { return (uint32_t)get_le(take(4, what), 4); }
uint64_t Reader::u64(const char* what) { return get_le(take(8, what), 8); }
int32_t Reader::i32(const char* what) { return (int32_t)u32(what); }

float Reader::f32(const char* what) {
    const uint32_t bits = u32(what);
    float v;
    std::memcpy(&v, &bits, 4);
    return v;
}

void Reader::bytes(void* out, size_t n, const char* what) { std::memcpy(out, take(n, what), n); }

std::string Reader::name(const char* what, uint32_t max_bytes) {
    const std::string s = string(what, max_bytes);
    for (unsigned char c : s) {
        if (c <= ' ' || c > '~') throw ProtocolError(std::string(what) + " contains byte " + std::to_string(c));
    }
    return s;
}

uint32_t Reader::count(const char* what, size_t min_item_bytes, uint32_t max_count) {
    const uint32_t n = u32(what);
    if (n > max_count || (uint64_t)n * min_item_bytes > remaining()) {
        throw ProtocolError(std::string(what) + " is " + std::to_string(n) + ", but at most " +
                            std::to_string(std::min<uint64_t>(max_count, remaining() / min_item_bytes)) +
                            " fit in this message");
    }
    return n;
}

std::string Reader::string(const char* what, uint32_t max_bytes) {
    const uint32_t n = u32(what);
    if (n > max_bytes) {
        throw ProtocolError(std::string(what) + " is " + std::to_string(n) + " bytes long, more than the limit of " +
                            std::to_string(max_bytes));
    }
    const uint8_t* p = take(n, what);
    return std::string(reinterpret_cast<const char*>(p), n);
}

}  // namespace dllama::net
