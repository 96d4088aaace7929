// Measures how fast this machine streams memory, the ceiling for decode (a memory-bound GEMV).
#pragma once
#include <cstddef>

#include "thread_pool.h"

namespace dllama {

// Best-of-`repeats` read bandwidth in bytes/second over a buffer of n_bytes, read by every thread of
// the pool (each its own contiguous slice).
double measure_read_bandwidth(size_t n_bytes, int repeats, ThreadPool& pool);

}  // namespace dllama
