// Correctness test and benchmark for cpp/kernels/matmul*.cpp (not part of the CMake build).
//
//   g++ -O3 -march=native -std=c++17 -Icpp cpp/kernels/tests/matmul_test.cpp cpp/kernels/matmul*.cpp
//       cpp/quants.cpp cpp/thread_pool.cpp -lpthread -o /tmp/matmul_test
//   /tmp/matmul_test          # correctness: every type and many shapes against a double-precision reference
//   /tmp/matmul_test bench    # GEMV GB/s (1 and 2 threads), 64-token GEMM throughput
//   /tmp/matmul_test bw       # pure read bandwidth over 2 GiB (1 and 2 threads)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#if defined(__AVX512F__)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"  // GCC 12 AVX-512 header false positive (bug 105593)
#endif
#include <immintrin.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "kernels/matmul.h"
#include "quants.h"

using namespace dllama;

static std::mt19937_64 rng(12345);

static std::vector<float> random_floats(size_t n, float scale) {
    std::normal_distribution<float> dist(0.0f, scale);
    std::vector<float> v(n);
    for (float& f : v) f = dist(rng);
    return v;
}

// Weights in the .m layout for `type`, made from f32 values.
static std::vector<uint8_t> encode(FloatType type, const std::vector<float>& w) {
    std::vector<uint8_t> out(bytes_of(type, w.size()));
    switch (type) {
        case FloatType::F32: std::memcpy(out.data(), w.data(), out.size()); break;
        case FloatType::F16:
            for (size_t i = 0; i < w.size(); i++) ((uint16_t*)out.data())[i] = f32_to_f16(w[i]);
            break;
        case FloatType::Q40: quantize_q40(w.data(), w.size(), (BlockQ40*)out.data()); break;
        case FloatType::Q80: quantize_q80(w.data(), w.size(), (BlockQ80*)out.data()); break;
    }
    return out;
}

// The activation rule quantized weights multiply: per 32 values d = amax/127 (stored as f16),
// q = round(x/d) with ties away from zero. Returns the dequantized values d*q.
static std::vector<double> reference_q80_activation(const float* x, size_t n) {
    std::vector<double> out(n);
    for (size_t b = 0; b < n / 32; b++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        const float d = amax / 127.0f;
        const float inv = d != 0.0f ? 1.0f / d : 0.0f;
        const double dd = f16_to_f32(f32_to_f16(d));
        for (int j = 0; j < 32; j++) out[b * 32 + j] = dd * std::round(x[b * 32 + j] * inv);
    }
    return out;
}

static int failures = 0;

static void check(FloatType type, int64_t rows, int64_t cols, int n_tokens, ThreadPool& pool) {
    const std::vector<float> wf = random_floats((size_t)rows * cols, 0.05f);
    const std::vector<uint8_t> wbytes = encode(type, wf);
    std::vector<float> x = random_floats((size_t)n_tokens * cols, 1.0f);
    // Exact rounding ties for the activation quantizer: amax 127 gives d = 1, so 2.5 -> 3 and -3.5 -> -4.
    if (cols >= 64) {
        x[32] = 127.0f;
        x[33] = 2.5f;
        x[34] = -3.5f;
        x[35] = 0.5f;
        x[36] = -0.5f;
    }
    // A zero block (d = 0).
    if (cols >= 96) std::fill(x.begin() + 64, x.begin() + 96, 0.0f);

    Matrix m(type, rows, cols, wbytes.data());
    bool ok = m.bytes() == wbytes.size() && m.rows() == rows && m.cols() == cols && m.type() == type;

    std::vector<float> wd((size_t)rows * cols), row(cols);
    dequantize(type, wbytes.data(), wd.size(), wd.data());
    for (int64_t r = 0; r < rows; r++) {
        m.dequantize_row(r, row.data());
        if (std::memcmp(row.data(), wd.data() + r * cols, cols * 4) != 0) ok = false;
    }

    Activations act;
    act.set(x.data(), n_tokens, cols);
    std::vector<float> y((size_t)n_tokens * rows, NAN);
    matmul(m, act, y.data(), pool);
    // Run twice: the second call reuses the cached Q80 activations (q, k and v share one input).
    std::vector<float> y2((size_t)n_tokens * rows, NAN);
    matmul(m, act, y2.data(), pool);
    if (std::memcmp(y.data(), y2.data(), y.size() * 4) != 0) ok = false;

    double worst = 0.0;
    for (int t = 0; t < n_tokens; t++) {
        const float* xt = x.data() + (size_t)t * cols;
        std::vector<double> xr(cols);
        if (is_quantized(type)) xr = reference_q80_activation(xt, cols);
        else for (int64_t c = 0; c < cols; c++) xr[c] = xt[c];
        for (int64_t r = 0; r < rows; r++) {
            double s = 0.0, mag = 0.0;
            for (int64_t c = 0; c < cols; c++) {
                s += (double)wd[r * cols + c] * xr[c];
                mag += std::fabs((double)wd[r * cols + c] * xr[c]);
            }
            const double err = std::fabs(y[(size_t)t * rows + r] - s) / (mag * 1e-5 + 1e-30);
            worst = std::max(worst, std::isnan(err) ? 1e30 : err);
        }
    }
    if (worst > 1.0) ok = false;
    if (!ok) {
        failures++;
        std::printf("FAIL %s rows=%lld cols=%lld tokens=%d threads=%d (error %.3g of tolerance)\n", float_type_name(type),
                    (long long)rows, (long long)cols, n_tokens, pool.size(), worst);
    }
}

static int run_tests() {
    ThreadPool pool1(1), pool2(2);
    int cases = 0;
    for (FloatType type : {FloatType::F32, FloatType::F16, FloatType::Q40, FloatType::Q80})
        for (int64_t cols : {32, 64, 96, 2048, 4160})
            for (int64_t rows : {1, 3, 8, 17, 256})
                for (int n : {1, 2, 5, 16, 64}) {
                    check(type, rows, cols, n, (rows + n) % 2 ? pool1 : pool2);
                    cases++;
                }
    // Both pools on one odd shape per type.
    for (FloatType type : {FloatType::F32, FloatType::F16, FloatType::Q40, FloatType::Q80})
        for (ThreadPool* p : {&pool1, &pool2}) {
            check(type, 33, 4096, 7, *p);
            cases++;
        }
    std::printf("%d cases, %d failures\n", cases, failures);
    return failures ? 1 : 0;
}

// ---- benchmarks ----

static double seconds_of(const std::function<void()>& f) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Runs f `repeats` times, returns {best, median} seconds.
static std::pair<double, double> time_runs(const std::function<void()>& f, int repeats) {
    std::vector<double> s;
    for (int i = 0; i < repeats; i++) s.push_back(seconds_of(f));
    std::sort(s.begin(), s.end());
    return {s.front(), s[s.size() / 2]};
}

// Random but valid .m bytes (scales are small positive f16 values) without an f32 copy of the matrix.
static std::vector<uint8_t> random_weight_bytes(FloatType type, int64_t rows, int64_t cols) {
    std::vector<uint8_t> b(bytes_of(type, (size_t)rows * cols));
    uint64_t s = 0x9E3779B97F4A7C15ull;
    for (size_t i = 0; i + 8 <= b.size(); i += 8) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        std::memcpy(&b[i], &s, 8);
    }
    const uint16_t scale = f32_to_f16(0.01f);
    if (type == FloatType::Q40)
        for (size_t i = 0; i < b.size(); i += sizeof(BlockQ40)) std::memcpy(&b[i], &scale, 2);
    if (type == FloatType::Q80)
        for (size_t i = 0; i < b.size(); i += sizeof(BlockQ80)) std::memcpy(&b[i], &scale, 2);
    if (type == FloatType::F16)
        for (size_t i = 0; i < b.size(); i += 2) b[i + 1] &= 0x3b;  // finite, |v| < 1
    if (type == FloatType::F32)
        for (size_t i = 0; i < b.size(); i += 4) b[i + 3] &= 0x3e;  // finite, |v| < 2
    return b;
}

static void bench_gemv(FloatType type, size_t target_bytes, int repeats) {
    const int64_t cols = 4096;
    const int64_t rows = (int64_t)(target_bytes / bytes_of(type, cols));
    Matrix m;
    {
        const std::vector<uint8_t> src = random_weight_bytes(type, rows, cols);
        m = Matrix(type, rows, cols, src.data());
    }
    const std::vector<float> x = random_floats(cols, 1.0f);
    std::vector<float> y(rows);
    for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        Activations a;
        a.set(x.data(), 1, cols);
        matmul(m, a, y.data(), pool);  // warm-up (page faults, quantized activation)
        auto [best, median] = time_runs([&] { matmul(m, a, y.data(), pool); }, repeats);
        std::printf("gemv %-3s %lldx%lld (%.2f GiB) threads=%d: best %.2f GB/s, median %.2f GB/s\n",
                    float_type_name(type), (long long)rows, (long long)cols, m.bytes() / 1073741824.0, threads,
                    m.bytes() / best / 1e9, m.bytes() / median / 1e9);
    }
}

static void bench_gemm(FloatType type, int64_t rows, int64_t cols, int n_tokens, int repeats) {
    const std::vector<uint8_t> src = random_weight_bytes(type, rows, cols);
    const Matrix m(type, rows, cols, src.data());
    const std::vector<float> x = random_floats((size_t)n_tokens * cols, 1.0f);
    std::vector<float> y((size_t)n_tokens * rows);
    for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        Activations a;
        a.set(x.data(), n_tokens, cols);
        matmul(m, a, y.data(), pool);
        // Each run quantizes the activations again, as a model forward does.
        auto [best, median] = time_runs([&] { a.set(x.data(), n_tokens, cols); matmul(m, a, y.data(), pool); }, repeats);
        const double ops = 2.0 * rows * cols * n_tokens;
        std::printf("gemm %-3s %lldx%lld x %d tokens threads=%d: best %.1f GOP/s (%.0f tokens/s), median %.1f GOP/s\n",
                    float_type_name(type), (long long)rows, (long long)cols, n_tokens, threads, ops / best / 1e9,
                    n_tokens / best, ops / median / 1e9);
    }
}

// Sum of n (a multiple of 32) values, a cache line per step, software prefetched 2 KiB ahead like the kernels.
static uint64_t sum_u64(const uint64_t* p, size_t n) {
#if defined(__AVX512F__)
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i < n; i += 32) {
        for (int l = 0; l < 4; l++) _mm_prefetch((const char*)(p + i + 256 + 8 * l), _MM_HINT_T0);
        a0 = _mm512_add_epi64(a0, _mm512_load_si512(p + i));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512(p + i + 8));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512(p + i + 16));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512(p + i + 24));
    }
    return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
#else
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i < n; i += 4) s0 += p[i], s1 += p[i + 1], s2 += p[i + 2], s3 += p[i + 3];
    return s0 + s1 + s2 + s3;
#endif
}

// Pure read bandwidth: each thread sums its own contiguous slice of a 2 GiB buffer (pre-faulted).
static void bench_bandwidth(int repeats) {
    const size_t n = (size_t)2 << 30 >> 3;
    std::unique_ptr<uint64_t, void (*)(void*)> buf(static_cast<uint64_t*>(std::aligned_alloc(2 << 20, n * 8)), std::free);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    madvise(buf.get(), n * 8, MADV_HUGEPAGE);  // as the weights are
#endif
    for (size_t i = 0; i < n; i++) buf.get()[i] = i;
    for (int threads : {1, 2}) {
        ThreadPool pool(threads);
        std::vector<uint64_t> sink(threads);
        auto [best, median] = time_runs(
            [&] {
                pool.run([&](int t, int nt) { sink[t] += sum_u64(buf.get() + n / nt * t, n / nt); });
            },
            repeats);
        std::printf("read bandwidth 2 GiB threads=%d: best %.2f GB/s, median %.2f GB/s (checksum %llu)\n", threads,
                    n * 8.0 / best / 1e9, n * 8.0 / median / 1e9, (unsigned long long)(sink[0] & 1));
    }
}

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "test";
    const int repeats = argc > 2 ? std::atoi(argv[2]) : 5;
    if (mode == "test") return run_tests();
    if (mode == "bw") {
        bench_bandwidth(repeats);
        return 0;
    }
    if (mode == "bench" || mode == "gemv") {
        for (FloatType t : {FloatType::Q40, FloatType::Q80, FloatType::F16, FloatType::F32})
            bench_gemv(t, (size_t)1 << 30, repeats);
        if (mode == "gemv") return 0;
    }
    if (mode == "bench" || mode == "gemm") {
        for (FloatType t : {FloatType::Q40, FloatType::Q80, FloatType::F16, FloatType::F32})
            bench_gemm(t, 4096, 4096, 64, repeats);
        return 0;
    }
    std::fprintf(stderr, "usage: %s [test|bench|gemv|gemm|bw] [repeats]\n", argv[0]);
    return 2;
}
