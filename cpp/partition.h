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

// The largest weight --split takes (weights are relative: 2,1,1 and 2000,1000,1000 are the same split).
constexpr float kMaxSplitWeight = 1e6f;

struct Partition {
    int node = 0, n_nodes = 1;
    // Each node's relative share, root first (--split); empty: equal shares. make_partition checks it.
    std::vector<float> weights;

    // Where node k's share of n units begins (k = n_nodes: n). Equal shares: n·k/N, so shares differ by
    // at most one unit and any node count works. Weighted: n times the weight of the nodes before k over
    // the sum of all weights, rounded down (computed in double, identically on every node).
    int64_t boundary(int64_t n_units, int k) const;
    // This node's contiguous share of n units.
    Range share(int64_t n_units) const { return Range{boundary(n_units, node), boundary(n_units, node + 1)}; }
    // The same in units of `grain` elements (e.g. 32 so that quantized blocks are never split); the
    // last node also takes the n % grain elements left over.
    Range share_of(int64_t n, int64_t grain) const {
        const Range r = share(n / grain);
        return Range{r.begin * grain, node == n_nodes - 1 ? n : r.end * grain};
    }
    // This node's part of the whole: its weight over the sum (1/N for equal shares).
    double fraction() const;
    // The same split seen from node k (e.g. the root sizing every node's share of the logits).
    Partition for_node(int k) const {
        Partition p = *this;
        p.node = k;
        return p;
    }
    // "2,1,1" for messages and cache keys; "" for equal shares.
    std::string split_text() const;
};

// Node `node` of `n_nodes` with --split `weights` (empty: equal shares). Throws std::invalid_argument
// naming the split when there is not one weight per node, or a weight is not a finite number above 0
// and at most kMaxSplitWeight. Weights that are all equal are stored as none (the same split).
Partition make_partition(int node, int n_nodes, std::vector<float> weights);

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
