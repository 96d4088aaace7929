#include "blocks/block.h"


namespace dllama {

void rms_norm_rows(ThreadPool& pool, const float* x, const float* w, int n, int dim, float eps, float* out) {
    auto rows = [&](size_t t0, size_t t1, int) {
        for (size_t t = t0; t < t1; t++) rms_norm(x + t * dim, w, dim, eps, out + t * dim);
    };
    if (n == 1) rows(0, 1, 0);
    else pool.parallel_for(n, 1, rows);
}

}  // namespace dllama
