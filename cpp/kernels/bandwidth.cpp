#include "kernels/bandwidth.h"

#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>
#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif
// GCC 12 reports false "uninitialized" warnings from inside its own AVX-512 reduction intrinsics.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dllama {

static uint64_t sum_slice(const uint64_t* p, size_t n) {
#if defined(__AVX512F__)
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 8));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 16));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 24));
    }
    uint64_t s = _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
    for (; i < n; i++) s += p[i];
    return s;
#else
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    for (; i < n; i++) s0 += p[i];
    return s0 + s1 + s2 + s3;
#endif
}

namespace {

// A buffer of about n_bytes, written once, that every thread of the pool reads its own slice of.
class ReadPasses {
public:
    ReadPasses(size_t n_bytes, ThreadPool& pool)
        : n_(n_bytes / sizeof(uint64_t) / 64 * 64),
          buf_(static_cast<uint64_t*>(std::aligned_alloc(64, n_ * 8)), std::free),
          pool_(pool),
          sink_(pool.size()) {
        uint64_t* p = buf_.get();
        pool_.parallel_for(n_, 4096, [&](size_t b, size_t e, int) {
            for (size_t i = b; i < e; i++) p[i] = i;
        });
    }
    ~ReadPasses() {
        volatile uint64_t keep = 0;
        for (uint64_t v : sink_) keep = keep + v;
    }
    size_t bytes() const { return n_ * 8; }
    // One pass; returns its seconds.
    double pass() {
        const uint64_t* p = buf_.get();
        const auto t0 = std::chrono::steady_clock::now();
        pool_.parallel_for(n_, 4096, [&](size_t b, size_t e, int t) { sink_[t] += sum_slice(p + b, e - b); });
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    }

private:
    size_t n_;
    std::unique_ptr<uint64_t, void (*)(void*)> buf_;
    ThreadPool& pool_;
    std::vector<uint64_t> sink_;
};

}  // namespace

double measure_read_bandwidth(size_t n_bytes, int repeats, ThreadPool& pool) {
    ReadPasses passes(n_bytes, pool);
    double best = 0.0;
    for (int r = 0; r < repeats; r++) best = std::max(best, passes.bytes() / passes.pass());
    return best;
}

double measure_sustained_read_bandwidth(size_t n_bytes, double seconds, ThreadPool& pool) {
    ReadPasses passes(n_bytes, pool);
    double elapsed = 0.0, bytes = 0.0;
    while (elapsed < seconds) {
        elapsed += passes.pass();
        bytes += passes.bytes();
    }
    return bytes / elapsed;
}

}  // namespace dllama
