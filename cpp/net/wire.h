// Explicit little-endian encoding of protocol messages, independent of the host's byte order and
// struct layout. Writer appends fields to a byte buffer; Reader takes them back out and throws
// ProtocolError, naming the field, when the message ends too early or a length is out of bounds.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "errors.h"

namespace dllama::net {

// Upper bound of any length-prefixed string in a message (host names, error texts).
constexpr uint32_t kMaxStringBytes = 1u << 20;

class Writer {
public:
    void u8(uint8_t v);
    void u32(uint32_t v);
    void u64(uint64_t v);
    void i32(int32_t v);
    void f32(float v);
    void bytes(const void* data, size_t n);
    void string(const std::string& s);  // u32 length, then the bytes (no terminator)

    const std::vector<uint8_t>& data() const { return buf_; }

private:
    std::vector<uint8_t> buf_;
};

// Reads from a buffer it does not own; `what` names the field in error messages.
class Reader {
public:
    Reader(const void* data, size_t size);
    explicit Reader(const std::vector<uint8_t>& data) : Reader(data.data(), data.size()) {}

    uint8_t u8(const char* what);
    uint32_t u32(const char* what);
    uint64_t u64(const char* what);
    int32_t i32(const char* what);
    float f32(const char* what);
    void bytes(void* out, size_t n, const char* what);
    std::string string(const char* what, uint32_t max_bytes = kMaxStringBytes);
    // A string that is a name (printable ASCII, no spaces), so that it can be shown in messages.
    std::string name(const char* what, uint32_t max_bytes);
    // A u32 count of items that take at least min_item_bytes each: refused (before anything is sized by
    // it) when the rest of the message is too short for that many, or when it exceeds max_count.
    uint32_t count(const char* what, size_t min_item_bytes, uint32_t max_count);

    size_t remaining() const { return size_ - pos_; }

private:
    const uint8_t* take(size_t n, const char* what);  // advances past n bytes or throws

    const uint8_t* data_;
    size_t size_;
    size_t pos_ = 0;
};

}  // namespace dllama::net
