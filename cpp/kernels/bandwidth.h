// Measures how fast this machine streams memory, the ceiling for decode (a memory-bound GEMV).
#pragma once
#include <cstddef>

#include "thread_pool.h"

namespace dllama {

// Best-of-`repeats` read bandwidth in bytes/second over a buffer of n_bytes, read by every thread of
// the pool (each its own contiguous slice).
double measure_read_bandwidth(size_t n_bytes, int repeats, ThreadPool& pool);

// Sustained read bandwidth: the bytes of whole passes over the buffer per second, passes repeated for
// at least `seconds`. What a node delivers through a decode, with what slows it over time (a CPU
// quota, other jobs) that a best-of-short-passes figure misses; --split auto weighs nodes by it.
double measure_sustained_read_bandwidth(size_t n_bytes, double seconds, ThreadPool& pool);

}  // namespace dllama
