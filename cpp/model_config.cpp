// Range checks of a ModelConfig and of a tensor table, run before anything is allocated from them: the
// values may come from a corrupt file or from a root over the network.
#include <sys/sysinfo.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "model.h"

namespace dllama {

namespace {

// Bounds well above every model we know (Llama-3.1-405B has dim 16384 and 126 layers; vocabularies
// reach 262k; contexts 1M), low enough that products of them cannot overflow 64 bits.
constexpr int kMaxDim = 1 << 16, kMaxHidden = 1 << 20, kMaxLayers = 1024, kMaxHeads = 1024, kMaxHeadDim = 4096;
constexpr int kMaxVocab = 1 << 22, kMaxContext = 1 << 22, kMaxExperts = 4096, kMaxRank = 1 << 16;

[[noreturn]] void bad(const std::string& what) { throw std::invalid_argument("invalid model config: " + what); }

void in_range(const char* name, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi)
        bad(std::string(name) + " is " + std::to_string(v) + ", expected " + std::to_string(lo) + ".." +
            std::to_string(hi));
}

void finite(const char* name, float v, bool positive) {
    if (!std::isfinite(v) || (positive ? v <= 0 : v < 0))
        bad(std::string(name) + " is " + std::to_string(v) + ", expected a finite " +
            (positive ? "positive" : "non-negative") + " number");
}

}  // namespace

void validate_config(const ModelConfig& c) {
    if (c.arch.empty()) bad("no architecture name");
    in_range("weight type", (int)c.weight_type, 0, 3);
    in_range("rope style", (int)c.rope_style, 0, 1);
    in_range("dim", c.dim, 1, kMaxDim);
    in_range("n_layers", c.n_layers, 1, kMaxLayers);
    in_range("n_heads", c.n_heads, 1, kMaxHeads);
    in_range("n_kv_heads", c.n_kv_heads, 1, c.n_heads);
    if (c.n_heads % c.n_kv_heads != 0)
        bad("n_heads " + std::to_string(c.n_heads) + " is not a multiple of n_kv_heads " + std::to_string(c.n_kv_heads));
    in_range("head_dim", c.head_dim, 1, kMaxHeadDim);
    in_range("vocab_size", c.vocab_size, 1, kMaxVocab);
    in_range("seq_len", c.seq_len, 1, kMaxContext);
    in_range("max_sequences", c.max_sequences, 1, Model::kMaxSequences);
    in_range("n_mtp_layers", c.n_mtp_layers, 0, 1);
    in_range("rope_dim", c.rope_dim, 0, c.head_dim);
    if (c.rope_dim % 2 != 0) bad("rope_dim " + std::to_string(c.rope_dim) + " is odd");
    if ((int64_t)c.rope_inv_freq.size() * 2 != c.rope_dim)
        bad(std::to_string(c.rope_inv_freq.size()) + " rope frequencies for rope_dim " + std::to_string(c.rope_dim));
    for (float f : c.rope_inv_freq) finite("a rope frequency", f, false);
    finite("norm_eps", c.norm_eps, true);
    finite("rope_theta", c.rope_theta, true);
    finite("rope_attention_factor", c.rope_attention_factor, true);
    finite("attention_scale", c.attention_scale, false);

    in_range("n_experts", c.n_experts, 0, kMaxExperts);
    const bool dense_layers = c.n_experts == 0 || c.n_dense_layers > 0;
    in_range("hidden_dim", c.hidden_dim, dense_layers ? 1 : 0, kMaxHidden);
    if (c.n_experts > 0) {
        in_range("n_active_experts", c.n_active_experts, 1, c.n_experts);
        in_range("moe_hidden_dim", c.moe_hidden_dim, 1, kMaxHidden);
        in_range("n_shared_experts", c.n_shared_experts, 0, 64);
        in_range("n_dense_layers", c.n_dense_layers, 0, c.n_layers);
        in_range("n_expert_groups", c.n_expert_groups, 1, c.n_experts);
        if (c.n_experts % c.n_expert_groups != 0) bad("n_experts is not a multiple of n_expert_groups");
        in_range("topk_groups", c.topk_groups, 1, c.n_expert_groups);
        finite("routed_scaling", c.routed_scaling, true);
    }
    in_range("kv_lora_rank", c.kv_lora_rank, 0, kMaxRank);
    in_range("q_lora_rank", c.q_lora_rank, 0, kMaxRank);
    if (c.kv_lora_rank > 0) {
        in_range("qk_nope_dim", c.qk_nope_dim, 1, kMaxHeadDim);
        in_range("qk_rope_dim", c.qk_rope_dim, 2, kMaxHeadDim);
        in_range("v_head_dim", c.v_head_dim, 1, kMaxHeadDim);
        if (c.rope_dim != c.qk_rope_dim)
            bad("rope_dim " + std::to_string(c.rope_dim) + " differs from qk_rope_dim " + std::to_string(c.qk_rope_dim));
        finite("latent_norm_eps", c.latent_norm_eps, true);
    }
}

void check_memory(const ModelConfig& c, int n_threads, uint64_t weight_bytes) {
    // The largest buffers the config sizes: the KV cache (all of it: a node may replicate every KV
    // head), the RoPE table and each thread's attention scores.
    const uint64_t per_position =
        c.kv_lora_rank > 0 ? (uint64_t)c.kv_lora_rank + c.qk_rope_dim : 2ull * c.n_kv_heads * c.head_dim;
    const uint64_t kv = (uint64_t)(c.n_layers + c.n_mtp_layers) * c.max_sequences * c.seq_len * per_position *
                        (c.kv_f16 ? 2 : 4);
    const uint64_t other = (uint64_t)c.seq_len * (c.rope_dim + (uint64_t)n_threads * (c.n_heads / c.n_kv_heads)) * 4;
    struct sysinfo info {};
    if (sysinfo(&info) != 0) return;
    const uint64_t available = ((uint64_t)info.totalram + info.totalswap) * info.mem_unit;
    const uint64_t needed = kv + other + weight_bytes;
    if (needed > available)
        throw std::invalid_argument("the model needs " + std::to_string(needed >> 20) + " MiB here (weights " +
                                    std::to_string(weight_bytes >> 20) + " MiB, KV cache of " +
                                    std::to_string(c.seq_len) + " positions " + std::to_string(kv >> 20) +
                                    " MiB) but this machine has " + std::to_string(available >> 20) +
                                    " MiB of memory and swap");
}

}  // namespace dllama
