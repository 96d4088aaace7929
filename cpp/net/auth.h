// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104) for the handshake's shared-secret check, plus a
// constant-time comparison and the system's random bytes. Written from the specifications; no
// third-party code.
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace dllama::net {

using Digest = std::array<uint8_t, 32>;

// Incremental SHA-256: update() any number of times, then finish() once.
class Sha256 {
public:
    Sha256();
    void update(const void* data, size_t n);
    Digest finish();

private:
    void compress(const uint8_t block[64]);

    uint32_t h_[8];
    uint8_t block_[64];
    size_t block_len_ = 0;
    uint64_t total_bytes_ = 0;
};

Digest sha256(const void* data, size_t n);
std::string hex(const Digest& d);  // 64 lowercase hex digits
Digest hmac_sha256(const std::string& key, const void* msg, size_t n);

// True when a[0..n) == b[0..n); the time taken does not depend on where they differ.
bool constant_time_equal(const void* a, const void* b, size_t n);

// n bytes from /dev/urandom; throws std::runtime_error if it cannot be read.
void random_bytes(void* out, size_t n);

}  // namespace dllama::net
