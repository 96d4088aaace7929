// The model configuration: one table of fields, from which the struct, the Python bindings and the
// SETUP frame sent to workers are all generated, so a field is added in one line.
#pragma once
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "tensor.h"

namespace dllama {

// X(type, name, default, header key): the header key is the .m header parameter the Python side copies
// into the field as is ("" when it is derived from several keys or from the engine's options).
#define DLLAMA_CONFIG_FIELDS(X)                                                                                    \
    X(std::string, arch, "", "")                      /* graph builder name ("llama", "qwen3", ...) */            \
    X(FloatType, weight_type, FloatType::F32, "")                                                                   \
    X(int, dim, 0, "dim")                                                                                           \
    X(int, hidden_dim, 0, "hidden_dim")                                                                             \
    X(int, n_layers, 0, "n_layers")                                                                                 \
    X(int, n_heads, 0, "n_heads")                                                                                   \
    X(int, n_kv_heads, 0, "n_kv_heads")                                                                             \
    X(int, head_dim, 0, "")                                                                                         \
    X(int, vocab_size, 0, "vocab_size")                                                                             \
    X(int, seq_len, 0, "")                            /* positions each sequence's KV cache holds */               \
    X(int, max_sequences, 1, "")                      /* sequence slots of the KV cache */                        \
    X(bool, kv_f16, false, "")                        /* keep the KV cache in f16 */                              \
    X(float, norm_eps, 1e-5f, "")                                                                                   \
    X(float, rope_theta, 10000.0f, "")                                                                              \
    X(int, rope_dim, 0, "")                           /* leading dims of each head RoPE rotates */                \
    X(RopeStyle, rope_style, RopeStyle::Interleaved, "")                                                            \
    X(std::vector<float>, rope_inv_freq, {}, "")      /* rope_dim / 2 frequencies, scaling applied */             \
    X(float, rope_attention_factor, 1.0f, "")                                                                       \
    X(bool, attention_bias, false, "attention_bias")                                                                \
    X(bool, qk_norm, false, "qk_norm")                                                                              \
    /* mixture of experts */                                                                                        \
    X(int, n_experts, 0, "n_experts")                                                                               \
    X(int, n_active_experts, 0, "n_active_experts")                                                                 \
    X(int, moe_hidden_dim, 0, "moe_hidden_dim")                                                                     \
    X(int, n_shared_experts, 0, "n_shared_experts")   /* always-on experts of width moe_hidden_dim each */        \
    X(int, n_dense_layers, 0, "n_dense_layers")       /* the first layers use a dense FFN of width hidden_dim */  \
    X(int, n_expert_groups, 1, "n_expert_groups")                                                                   \
    X(int, topk_groups, 1, "topk_groups")                                                                           \
    X(float, routed_scaling, 1.0f, "routed_scaling_factor_f32")                                                     \
    X(bool, norm_topk_prob, true, "norm_topk_prob")                                                                 \
    /* multi-head latent attention (GLM-4.7-Flash): ranks of the compressed q and kv, per-head dims */             \
    X(int, q_lora_rank, 0, "q_lora_rank")             /* 0: q comes from a plain projection */                    \
    X(int, kv_lora_rank, 0, "kv_lora_rank")                                                                         \
    X(int, qk_nope_dim, 0, "qk_nope_head_dim")                                                                      \
    X(int, qk_rope_dim, 0, "qk_rope_head_dim")                                                                      \
    X(int, v_head_dim, 0, "v_head_dim")                                                                             \
    X(float, latent_norm_eps, 1e-6f, "latent_norm_epsilon_f32")                                                     \
    X(float, attention_scale, 0.0f, "attention_scale_f32") /* softmax scale; 0: 1/sqrt(head_dim) */               \
    X(bool, attention_out_bias, false, "")                                                                         \
    /* GLM's multi-token prediction: a layer after the last that drafts the token after next */                   \
    X(int, n_mtp_layers, 0, "n_mtp_layers")           /* 0 or 1: loaded only when drafting with it */

struct ModelConfig {
#define DLLAMA_DECLARE_FIELD(type, name, default_value, header_key) type name = default_value;
    DLLAMA_CONFIG_FIELDS(DLLAMA_DECLARE_FIELD)
#undef DLLAMA_DECLARE_FIELD
};

}  // namespace dllama
