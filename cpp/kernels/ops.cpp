#include "kernels/ops.h"

#include <algorithm>
#include <cmath>

namespace dllama {

void rms_norm(const float* x, const float* w, int n, float eps, float* out) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float scale = (float)(1.0 / std::sqrt(ss / n + eps));
    for (int i = 0; i < n; i++) out[i] = w[i] * (x[i] * scale);
}

void add(float* x, const float* b, int n) {
    for (int i = 0; i < n; i++) x[i] += b[i];
}

void silu_mul(float* gate, const float* up, int n) {
    for (int i = 0; i < n; i++) {
        const float g = gate[i];
        gate[i] = g / (1.0f + std::exp(-g)) * up[i];
    }
}

void softmax(float* x, int n) {
    float mx = x[0];
    for (int i = 1; i < n; i++) mx = std::max(mx, x[i]);
    float sum = 0.0f;
    for (int i = 0; i < n; i++) {
        x[i] = std::exp(x[i] - mx);
        sum += x[i];
    }
    const float inv = 1.0f / sum;
    for (int i = 0; i < n; i++) x[i] *= inv;
}

RopeTable::RopeTable(int rope_dim, float theta, const RopeScaling& s, int max_pos, RopeStyle style)
    : rope_dim_(rope_dim), style_(style) {
    const int half = rope_dim / 2;
    std::vector<double> inv_freq(half);
    for (int j = 0; j < half; j++) {
        double f = 1.0 / std::pow((double)theta, (2.0 * j) / rope_dim);
        if (s.factor != 1.0f) {
            const double low_wavelen = s.original_max_position / s.low_freq_factor;
            const double high_wavelen = s.original_max_position / s.high_freq_factor;
            const double wavelen = 2.0 * M_PI / f;
            if (wavelen > low_wavelen) {
                f /= s.factor;
            } else if (wavelen >= high_wavelen) {
                const double smooth = (s.original_max_position / wavelen - s.low_freq_factor) /
                                      (s.high_freq_factor - s.low_freq_factor);
                f = (1.0 - smooth) * f / s.factor + smooth * f;
            }
        }
        inv_freq[j] = f;
    }
    cos_.resize((size_t)max_pos * half);
    sin_.resize((size_t)max_pos * half);
    for (int p = 0; p < max_pos; p++) {
        for (int j = 0; j < half; j++) {
            // Angles in float32 like the reference implementation, then cos/sin in double.
            const float angle = (float)p * (float)inv_freq[j];
            cos_[(size_t)p * half + j] = (float)std::cos((double)angle);
            sin_[(size_t)p * half + j] = (float)std::sin((double)angle);
        }
    }
}

void RopeTable::apply(float* x, int n_heads, int head_dim, int pos) const {
    const int half = rope_dim_ / 2;
    const float* c = &cos_[(size_t)pos * half];
    const float* s = &sin_[(size_t)pos * half];
    for (int h = 0; h < n_heads; h++) {
        float* v = x + (size_t)h * head_dim;
        for (int j = 0; j < half; j++) {
            const int i0 = style_ == RopeStyle::Interleaved ? 2 * j : j;
            const int i1 = style_ == RopeStyle::Interleaved ? 2 * j + 1 : j + half;
            const float a = v[i0], b = v[i1];
            v[i0] = a * c[j] - b * s[j];
            v[i1] = a * s[j] + b * c[j];
        }
    }
}

}  // namespace dllama
