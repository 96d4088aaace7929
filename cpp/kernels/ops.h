// Elementwise and per-row operations of the forward pass (everything except matmul).
#pragma once
#include <cstdint>
#include <vector>

namespace dllama {

// out = w * x / sqrt(mean(x^2) + eps); out may alias x.
void rms_norm(const float* x, const float* w, int n, float eps, float* out);

// In place: x[i] += b[i].
void add(float* x, const float* b, int n);

// sum_i a[i] * b[i], with SIMD partial sums (attention scores).
float dot(const float* a, const float* b, int n);

// In place: y[i] += a * x[i] (attention's weighted sum of values).
void axpy(float* y, float a, const float* x, int n);

// out[i] = x[i] as f32 (SIMD).
void f16_to_f32_row(const uint16_t* x, float* out, int n);

// The same with x stored as IEEE half (an f16 KV cache).
float dot_f16(const float* a, const uint16_t* b, int n);
void axpy_f16(float* y, float a, const uint16_t* x, int n);

// In place: gate[i] = silu(gate[i]) * up[i].
void silu_mul(float* gate, const float* up, int n);

// In place softmax over n values.
void softmax(float* x, int n);

// Which dimensions of a head RoPE rotates together: interleaved pairs (2j, 2j+1), as in Meta's Llama
// layout and GLM; or halves (j, j + rope_dim/2), as in HF's rotate_half (Qwen3, GLM-4.5).
enum class RopeStyle : int { Interleaved = 0, Halves = 1 };

// cos/sin for every position < max_pos and every rotated pair (inv_freq holds one frequency per pair;
// the Python side computes them for plain, Llama 3.1 and YaRN RoPE). YaRN's attention factor scales
// cos and sin.
class RopeTable {
public:
    RopeTable() = default;
    RopeTable(const std::vector<float>& inv_freq, float attention_factor, int max_pos, RopeStyle style);
    // Rotates the first rope_dim values of each of n_heads heads (stride head_dim) at position pos.
    void apply(float* x, int n_heads, int head_dim, int pos) const;
    int rope_dim() const { return rope_dim_; }

private:
    int rope_dim_ = 0;
    RopeStyle style_ = RopeStyle::Interleaved;
    std::vector<float> cos_, sin_;  // [max_pos][rope_dim/2]
};

}  // namespace dllama
