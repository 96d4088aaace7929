#include "partition.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace dllama {

// Every node computes every boundary itself, so this file is built without fused multiply-add
// (CMakeLists.txt): the same weights give the same boundaries on every machine.
int64_t Partition::boundary(int64_t n_units, int k) const {
    if (k >= n_nodes) return n_units;
    if (weights.empty()) return n_units * k / n_nodes;
    double before = 0, total = 0;
    for (int i = 0; i < n_nodes; i++) {
        total += weights[i];
        if (i < k) before += weights[i];
    }
    return (int64_t)std::floor((double)n_units * before / total);
}

double Partition::fraction() const {
    if (weights.empty()) return 1.0 / n_nodes;
    double total = 0;
    for (float w : weights) total += w;
    return weights[node] / total;
}

std::string Partition::split_text() const {
    std::string text;
    char buf[32];
    for (float w : weights) {
        std::snprintf(buf, sizeof(buf), "%.9g", w);
        text += (text.empty() ? "" : ",") + std::string(buf);
    }
    return text;
}

Partition make_partition(int node, int n_nodes, std::vector<float> weights) {
    if (weights.empty()) return Partition{node, n_nodes, {}};
    if ((int)weights.size() != n_nodes)
        throw std::invalid_argument("split has " + std::to_string(weights.size()) +
                                    (weights.size() == 1 ? " weight" : " weights") + " for " + std::to_string(n_nodes) +
                                    (n_nodes == 1 ? " node" : " nodes") + " (one per node, root first)");
    bool all_equal = true;
    for (size_t i = 0; i < weights.size(); i++) {
        const float w = weights[i];
        if (!std::isfinite(w) || w <= 0 || w > kMaxSplitWeight) {
            char buf[32];
            std::snprintf(buf, sizeof(buf), "%g", w);
            throw std::invalid_argument("split weight of node " + std::to_string(i) + " is " + buf +
                                        ", expected a number above 0 and at most 1e6");
        }
        all_equal = all_equal && w == weights[0];
    }
    if (all_equal) weights.clear();
    return Partition{node, n_nodes, std::move(weights)};
}

}  // namespace dllama
