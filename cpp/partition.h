// Tensor parallelism: which share of every layer this process computes, and how the processes
// exchange partial results. A single machine is node 0 of 1 with no Collective.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace dllama {

struct Range {
    int64_t begin = 0, end = 0;
    int64_t size() const { return end - begin; }
    bool empty() const { return end <= begin; }
    static Range all(int64_t n) { return Range{0, n}; }
};

struct Partition {
    int node = 0, n_nodes = 1;
    // This node's contiguous share of n units; shares differ by at most one unit, so any node count
    // works, not only powers of two.
    Range share(int64_t n_units) const {
        return Range{n_units * node / n_nodes, n_units * (node + 1) / n_nodes};
    }
    // The same in units of `grain` elements (e.g. 32 so that quantized blocks are never split).
    Range share_of(int64_t n, int64_t grain) const {
        const Range r = share(n / grain);
        return Range{r.begin * grain, node == n_nodes - 1 ? n : r.end * grain};
    }
};

// The exchanges of one tensor-parallel step. Every node calls them in the same order; results are
// identical on every node.
class Collective {
public:
    struct Stats {
        uint64_t bytes_sent = 0, bytes_received = 0;
        double seconds_in_sync = 0;
        uint64_t syncs = 0;
    };
    virtual ~Collective() = default;
    virtual Stats stats() const = 0;
    virtual void reset_stats() = 0;
    // Node 0 brackets each step's exchanges with begin_step/end_step (between steps the session may
    // idle for hours); on a worker begin_step waits for node 0's next step.
    virtual void begin_step() = 0;
    virtual void end_step() = 0;
    // Sums each node's partial data[0..n) across nodes, in place.
    virtual void all_reduce_sum(float* data, size_t n) = 0;
    // Node 0's bytes to every node.
    virtual void broadcast(void* data, size_t bytes) = 0;
    // Concatenates every node's bytes, in node order, on node 0 (`all` is only written there).
    virtual void gather_to_root(const void* mine, size_t my_bytes, void* all, const std::vector<size_t>& bytes_per_node) = 0;
};

// Calls begin_step, and end_step when it goes out of scope (c may be null: one machine).
class StepScope {
public:
    explicit StepScope(Collective* c) : c_(c) {
        if (c_) c_->begin_step();
    }
    ~StepScope() {
        if (c_) c_->end_step();
    }
    StepScope(const StepScope&) = delete;
    StepScope& operator=(const StepScope&) = delete;

private:
    Collective* c_;
};

}  // namespace dllama
