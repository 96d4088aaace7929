#include "blocks/block.h"

#include <numeric>
#include <stdexcept>

namespace dllama {

void rms_norm_rows(ThreadPool& pool, const float* x, const float* w, int n, int dim, float eps, float* out) {
    auto rows = [&](size_t t0, size_t t1, int) {
        for (size_t t = t0; t < t1; t++) rms_norm(x + t * dim, w, dim, eps, out + t * dim);
    };
    if (n == 1) rows(0, 1, 0);
    else pool.parallel_for(n, 1, rows);
}

UnitSplit UnitSplit::of(const WeightSource& weights, const std::string& tensor, int64_t units, const std::string& unit) {
    const TensorInfo& t = weights.info(tensor);
    if (units < 1 || t.cols % units)
        throw std::invalid_argument(weights.describe() + ": tensor " + tensor + " has " + std::to_string(t.cols) +
                                    " columns, not a multiple of its " + std::to_string(units) + " " + unit);
    return UnitSplit{tensor, unit, units, t.cols / units, t.type};
}

int64_t UnitSplit::grain() const {
    return is_quantized(type) ? kBlockSize / std::gcd(width, (int64_t)kBlockSize) : 1;
}

std::string UnitSplit::limit() const {
    const std::string n = std::to_string(units) + " " + unit;
    if (grain() == 1) return tensor + " has " + n + " and every node needs at least one";
    return tensor + " (" + float_type_name(type) + ") can only be cut between 32-value blocks of its " +
           std::to_string(units * width) + " input columns, i.e. after every " + std::to_string(grain()) + " of its " +
           n + (width > 1 ? " of " + std::to_string(width) + " columns" : "");
}

std::string UnitSplit::refusal(const Partition& part) const {
    int empty_node = -1;
    for (int k = 0; k < part.n_nodes && empty_node < 0; k++)
        if (part.for_node(k).share_of(units, grain()).empty()) empty_node = k;
    if (empty_node < 0) return "";
    const int64_t most = max_nodes();
    if (part.weights.empty() || most < part.n_nodes)
        return limit() + "; it runs on " + (most == 1 ? std::string("1 node only") : "1 to " + std::to_string(most) + " nodes") +
               (grain() > 1 ? " (more with F32 or F16 weights)" : "");
    // Node k gets at least one of the `most` groups when its weight is at least 1/most of the sum.
    return limit() + "; split " + part.split_text() + " gives node " + std::to_string(empty_node) +
           " none of them: every node's weight must be at least 1/" + std::to_string(most) + " of the sum";
}

Range UnitSplit::share(const Partition& part) const {
    const std::string why = refusal(part);
    if (!why.empty())
        throw std::invalid_argument("cannot split " + tensor + " across " + std::to_string(part.n_nodes) + " nodes: " + why);
    return part.share_of(units, grain());
}

}  // namespace dllama
