#include "thread_pool.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
static inline void cpu_relax() { _mm_pause(); }
#elif defined(__aarch64__)
static inline void cpu_relax() { asm volatile("yield"); }
#else
static inline void cpu_relax() {}
#endif

namespace dllama {

// Workers spin this many rounds waiting for the next task before they sleep: ops within a forward
// step come every few microseconds, tokens every few milliseconds.
static constexpr int kSpinRounds = 1 << 16;
// Every this many rounds a spinning thread yields its core: on a machine with more runnable threads
// than cores, the thread it waits for may be the one waiting for that core.
static constexpr int kYieldEvery = 256;

ThreadPool::ThreadPool(int n_threads) : n_threads_(n_threads < 1 ? 1 : n_threads) {
    for (int i = 1; i < n_threads_; i++) workers_.emplace_back([this, i] { worker_loop(i); });
}

ThreadPool::~ThreadPool() {
    {
        std::lock_guard<std::mutex> lock(mutex_);
        stop_.store(true);
        generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& w : workers_) w.join();
}

void ThreadPool::claim_chunks(int thread) {
    for (size_t c; (c = next_chunk_.fetch_add(1)) < n_chunks_;) (*chunk_)(c, thread);
}

void ThreadPool::run_chunks(size_t n_chunks, const std::function<void(size_t, int)>& chunk) {
    chunk_ = &chunk;
    n_chunks_ = n_chunks;
    next_chunk_.store(0);
    // Sequentially consistent, like the worker's (sleepers_ up, then generation_ read), so either the
    // worker sees the new generation or we see it asleep and wake it.
    const uint64_t generation = generation_.fetch_add(1) + 1;
    if (sleepers_.load() > 0) {
        std::lock_guard<std::mutex> lock(mutex_);
        wake_.notify_all();
    }
    claim_chunks(0);
    closed_.store(generation);
    for (int spin = 1; busy_.load() != 0; spin++) {  // chunks other threads are still running
        cpu_relax();
        if (spin % kYieldEvery == 0) std::this_thread::yield();
    }
}

void ThreadPool::worker_loop(int index) {
    uint64_t seen = 0;
    for (;;) {
        uint64_t gen = generation_.load(std::memory_order_acquire);
        for (int spin = 1; gen == seen && spin <= kSpinRounds; spin++) {
            cpu_relax();
            if (spin % kYieldEvery == 0) std::this_thread::yield();
            gen = generation_.load(std::memory_order_acquire);
        }
        if (gen == seen) {
            std::unique_lock<std::mutex> lock(mutex_);
            sleepers_.fetch_add(1);
            wake_.wait(lock, [&] { return generation_.load() != seen; });
            sleepers_.fetch_sub(1);
            gen = generation_.load();
        }
        seen = gen;
        if (stop_.load()) return;
        busy_.fetch_add(1);
        if (closed_.load() < gen) claim_chunks(index);  // else: that parallel_for is already over
        busy_.fetch_sub(1);
    }
}

}  // namespace dllama
