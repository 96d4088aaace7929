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

Range UnitSplit::share(const Partition& part) const {
    const Range r = part.share_of(units, grain());
    if (r.empty())
        throw std::invalid_argument("cannot split " + tensor + " across " + std::to_string(part.n_nodes) +
                                    " nodes: " + limit());
    return r;
}

}  // namespace dllama
