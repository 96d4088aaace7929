// Correctness test for cpp/kernels/attention.cpp, and the measurement behind the KV cache's fixed slots
// (not part of the CMake build).
//
//   g++ -O3 -march=native -std=c++17 -Icpp cpp/kernels/tests/attention_test.cpp cpp/kernels/attention.cpp
//       cpp/kernels/ops.cpp cpp/quants.cpp -o /tmp/attention_test
//   /tmp/attention_test          # both layouts, f32 and f16, against a double-precision reference
//   /tmp/attention_test bench    # a head's history read whole (fixed slots) or 16 positions at a time
//                                # from scattered pages (paged blocks)
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "kernels/attention.h"
#include "quants.h"

using namespace dllama;

// A head's history of n_rows rows in a layout, from row-major values.
struct History {
    std::vector<float> f32;
    std::vector<uint16_t> f16;
    KvHistory view;
    History(const std::vector<float>& rows, int n_rows, int width, KvLayout layout, bool half) {
        const size_t n = (size_t)(n_rows + kPositionBlock - 1) / kPositionBlock * kPositionBlock * width;
        if (half) f16.assign(n, 0);
        else f32.assign(n, 0.0f);
        for (int r = 0; r < n_rows; r++)
            for (int d = 0; d < width; d++) {
                const size_t i = kv_index(layout, width, r, d);
                if (half) f16[i] = f32_to_f16(rows[(size_t)r * width + d]);
                else f32[i] = rows[(size_t)r * width + d];
            }
        view = {half ? nullptr : f32.data(), half ? f16.data() : nullptr, width, layout};
    }
};

static std::vector<float> random_floats(size_t n, uint32_t seed) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> dist(0.0f, 1.0f);
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
}

static int test() {
    int failures = 0;
    for (KvLayout layout : {KvLayout::Rows, KvLayout::PositionBlocks})
        for (bool half : {false, true})
            for (int width : {16, 32, 48, 64, 128, 512})
                for (int n_rows : {1, 15, 16, 17, 100})
                    for (int n_q : {1, 2, 3, 5}) {
                        std::vector<float> rows = random_floats((size_t)n_rows * width, n_rows * 31 + width);
                        if (half)
                            for (float& x : rows) x = f16_to_f32(f32_to_f16(x));
                        const History h(rows, n_rows, width, layout, half);
                        const std::vector<float> q = random_floats((size_t)n_q * width, 7);
                        const std::vector<float> p = random_floats((size_t)n_q * n_rows, 9);
                        std::vector<float> scores((size_t)n_q * n_rows), sums((size_t)n_q * width);
                        attention_scores(h.view, n_rows, q.data(), width, n_q, scores.data(), n_rows);
                        attention_weighted_sum(h.view, n_rows, p.data(), n_rows, n_q, sums.data(), width);
                        double worst = 0;
                        for (int i = 0; i < n_q; i++) {
                            for (int s = 0; s < n_rows; s++) {
                                double ref = 0;
                                for (int d = 0; d < width; d++) ref += (double)q[i * width + d] * rows[(size_t)s * width + d];
                                worst = std::max(worst, std::fabs(ref - scores[(size_t)i * n_rows + s]) / std::sqrt((double)width));
                            }
                            for (int d = 0; d < width; d++) {
                                double ref = 0;
                                for (int s = 0; s < n_rows; s++) ref += (double)p[(size_t)i * n_rows + s] * rows[(size_t)s * width + d];
                                worst = std::max(worst, std::fabs(ref - sums[(size_t)i * width + d]) / std::sqrt((double)n_rows));
                            }
                        }
                        if (worst > 1e-4) {
                            std::printf("FAIL layout=%d f16=%d width=%d rows=%d queries=%d: error %.2e\n", (int)layout,
                                        half, width, n_rows, n_q, worst);
                            failures++;
                        }
                    }
    std::printf("%s\n", failures ? "attention kernels: FAILED" : "attention kernels: ok");
    return failures ? 1 : 0;
}

// Scores of 4 query heads and their weighted sums over each of `heads` histories of n_rows positions
// (head_dim 64, f16), read either whole or page by page (16 positions; a head's pages one after the
// other in the pool, or scattered through it as pages taken by sequences growing together would be).
static void bench(int n_rows, int heads, bool scattered, int repeats) {
    const int width = 64, n_q = 4, page = kPositionBlock;
    const int n_pages = n_rows / page;
    std::vector<History> keys, values;
    for (int h = 0; h < heads; h++) {
        const std::vector<float> rows = random_floats((size_t)n_rows * width, h);
        keys.emplace_back(rows, n_rows, width, KvLayout::PositionBlocks, true);
        values.emplace_back(rows, n_rows, width, KvLayout::Rows, true);
    }
    // Paged: the same data in a pool of pages, each head's pages scattered through it.
    std::vector<uint16_t> key_pool((size_t)heads * n_rows * width), value_pool(key_pool.size());
    std::vector<int> order((size_t)heads * n_pages);
    std::iota(order.begin(), order.end(), 0);
    if (scattered) std::shuffle(order.begin(), order.end(), std::mt19937(1));
    const size_t page_values = (size_t)page * width;
    for (int h = 0; h < heads; h++)
        for (int p = 0; p < n_pages; p++) {
            const size_t to = (size_t)order[(size_t)h * n_pages + p] * page_values;
            std::memcpy(&key_pool[to], &keys[h].f16[p * page_values], page_values * 2);
            std::memcpy(&value_pool[to], &values[h].f16[p * page_values], page_values * 2);
        }
    const std::vector<float> q = random_floats((size_t)n_q * width, 3);
    std::vector<float> scores((size_t)n_q * n_rows, 1.0f / n_rows), out((size_t)n_q * width), part(out.size());
    auto whole = [&] {
        for (int h = 0; h < heads; h++) {
            attention_scores(keys[h].view, n_rows, q.data(), width, n_q, scores.data(), n_rows);
            attention_weighted_sum(values[h].view, n_rows, scores.data(), n_rows, n_q, out.data(), width);
        }
    };
    auto paged = [&] {
        for (int h = 0; h < heads; h++) {
            for (int p = 0; p < n_pages; p++) {
                const KvHistory k{nullptr, &key_pool[order[(size_t)h * n_pages + p] * page_values], width, KvLayout::PositionBlocks};
                attention_scores(k, page, q.data(), width, n_q, scores.data() + p * page, n_rows);
            }
            std::fill(out.begin(), out.end(), 0.0f);
            for (int p = 0; p < n_pages; p++) {
                const KvHistory v{nullptr, &value_pool[order[(size_t)h * n_pages + p] * page_values], width, KvLayout::Rows};
                attention_weighted_sum(v, page, scores.data() + p * page, n_rows, n_q, part.data(), width);
                for (size_t i = 0; i < out.size(); i++) out[i] += part[i];
            }
        }
    };
    const double bytes = 2.0 * heads * n_rows * width * 2;
    for (auto [name, fn] : {std::pair<const char*, std::function<void()>>{"whole (fixed slots)", whole},
                            {scattered ? "scattered pages" : "pages in order", paged}}) {
        if (scattered && fn.target<decltype(whole)>()) continue;
        fn();
        double best = 1e9;
        for (int r = 0; r < repeats; r++) {
            const auto t0 = std::chrono::steady_clock::now();
            fn();
            best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        std::printf("%5d positions x %d heads, %-20s %.2f ms  %.1f GB/s\n", n_rows, heads, name, best * 1e3,
                    bytes / best / 1e9);
    }
}

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "test";
    if (mode == "test") return test();
    if (mode == "bench") {
        for (int n_rows : {256, 2048})
            for (bool scattered : {false, true}) bench(n_rows, 16 * 8, scattered, argc > 2 ? std::atoi(argv[2]) : 20);
        return 0;
    }
    std::fprintf(stderr, "usage: %s [test|bench] [repeats]\n", argv[0]);
    return 2;
}
