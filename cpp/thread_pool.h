// A persistent pool of worker threads; the calling thread takes part as thread 0.
//
// Work is split into a few chunks per thread that threads claim one at a time, and the caller returns
// as soon as every chunk is done: a worker the OS has not scheduled yet (a busy machine) never holds
// the caller up, it just finds nothing left to do.
#pragma once
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace dllama {

class ThreadPool {
public:
    explicit ThreadPool(int n_threads);
    ~ThreadPool();
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return n_threads_; }

    // Runs body(begin, end, thread) over contiguous ranges covering [0, n), each a multiple of `grain`
    // (except the last); `thread` (0..size()-1) identifies the running thread for per-thread scratch.
    template <typename F>
    void parallel_for(size_t n, size_t grain, F&& body) {
        if (n == 0) return;
        const size_t units = (n + grain - 1) / grain;
        const size_t chunks = std::min(units, (size_t)n_threads_ * kChunksPerThread);
        if (n_threads_ == 1 || chunks == 1) {
            body(size_t(0), n, 0);
            return;
        }
        run_chunks(chunks, [&](size_t c, int thread) {
            const size_t u0 = units * c / chunks, u1 = units * (c + 1) / chunks;
            body(u0 * grain, std::min(n, u1 * grain), thread);
        });
    }

private:
    static constexpr size_t kChunksPerThread = 4;
    void run_chunks(size_t n_chunks, const std::function<void(size_t, int)>& chunk);
    void claim_chunks(int thread);
    void worker_loop(int index);

    int n_threads_;
    std::vector<std::thread> workers_;
    const std::function<void(size_t, int)>* chunk_ = nullptr;
    size_t n_chunks_ = 0;
    std::atomic<size_t> next_chunk_{0};
    std::atomic<uint64_t> generation_{0};  // bumped for each parallel_for
    std::atomic<uint64_t> closed_{0};      // the last generation whose chunks are all claimed and done
    std::atomic<int> busy_{0};             // workers inside a generation
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::condition_variable wake_;
    std::atomic<int> sleepers_{0};
};

}  // namespace dllama
