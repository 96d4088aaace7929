// A persistent pool of worker threads. The calling thread takes part as thread 0.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstddef>
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

    // Runs task(thread_index, n_threads) on every thread and returns when all are done.
    void run(const std::function<void(int, int)>& task);

    // Splits [0, n) into contiguous ranges, one per thread, each a multiple of `grain` (except the last).
    template <typename F>
    void parallel_for(size_t n, size_t grain, F&& body) {
        if (n == 0) return;
        const size_t units = (n + grain - 1) / grain;
        if (n_threads_ == 1 || units == 1) {
            body(size_t(0), n, 0);
            return;
        }
        run([&](int t, int nt) {
            const size_t u0 = units * t / nt, u1 = units * (t + 1) / nt;
            const size_t begin = u0 * grain, end = std::min(n, u1 * grain);
            if (begin < end) body(begin, end, t);
        });
    }

private:
    void worker_loop(int index);

    int n_threads_;
    std::vector<std::thread> workers_;
    const std::function<void(int, int)>* task_ = nullptr;
    std::atomic<uint64_t> generation_{0};
    std::atomic<int> pending_{0};
    std::atomic<bool> stop_{false};
    std::mutex mutex_;
    std::condition_variable wake_;
    std::atomic<int> sleepers_{0};
};

}  // namespace dllama
