"""The architecture table: which HF `model_type` maps to which .m arch id, C++ graph builder, header
fields and tensor list. The converter writes tensors in the order `tensors()` gives and the engine
reads them back by the same list, so this module is the one place both sides agree on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .model_file import (
    NORM_EPSILON_CODES,
    ArchType,
    FloatType,
    Header,
    HiddenAct,
    ModelFileError,
    RopeType,
    read_header,
)
from .rope import yarn_mscale

Transform = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a .m file."""

    name: str  # what the C++ graph looks it up by
    rows: int
    cols: int
    dtype: FloatType | None  # None: the file's weight type
    source: str  # the HF tensor it is made from
    transform: Transform | None = None  # applied to the HF tensor (as float32) before writing
    fallback: str | None = None  # HF tensor to use when `source` is absent (tied lm_head)
    source_rows: tuple[int, int] | None = None  # only these rows of `source` (split fused weights)
    source_shape: tuple[int, ...] | None = None  # the HF shape, when `transform` changes it


class UnsupportedModelError(ValueError):
    """An HF checkpoint this package cannot convert; the message says why."""


# ---------------------------------------------------------------------------------------------
# Reading HF config.json


def rope_parameters(cfg: dict) -> dict:
    """RoPE settings from either config style: transformers 5's `rope_parameters` or the older
    top-level `rope_theta` / `rope_scaling` / `partial_rotary_factor`."""
    rope = dict(cfg.get("rope_parameters") or {})
    if "rope_theta" not in rope:
        rope["rope_theta"] = cfg.get("rope_theta", 10000.0)
    scaling = cfg.get("rope_scaling")
    if scaling:
        rope.update(scaling)
    if "partial_rotary_factor" not in rope and "partial_rotary_factor" in cfg:
        rope["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    rope["rope_type"] = rope_type
    return rope


def _require(cfg: dict, key: str):
    if cfg.get(key) is None:
        raise UnsupportedModelError(f"config.json has no {key!r}")
    return cfg[key]


def norm_epsilon_params(eps: float) -> dict:
    """distributed-llama stores eps as a code (5 -> 1e-5, 6 -> 1e-6); other values take our f32 key."""
    for code, value in NORM_EPSILON_CODES.items():
        if abs(eps - value) <= value * 1e-6:
            return {"norm_epsilon": code}
    return {"norm_epsilon_f32": float(eps)}


def _int_or_f32(name: str, value: float) -> dict:
    """An int header key when the value is integral, else our exact f32 twin."""
    if float(value).is_integer():
        return {name: int(value)}
    return {name + "_f32": float(value)}


def rope_scaling_params(rope: dict, max_position: int, arch_name: str) -> dict:
    """Header keys for a RoPE scaling: Llama 3.1's in distributed-llama's keys, YaRN in ours."""
    kind = rope["rope_type"]
    if kind == "default":
        return {}
    if kind == "llama3":
        params = {"rope_type": int(RopeType.LLAMA3_1),
                  "rope_scaling_orig_max_seq_len": int(rope["original_max_position_embeddings"])}
        params.update(_int_or_f32("rope_scaling_factor", rope["factor"]))
        params.update(_int_or_f32("rope_scaling_low_freq_factor", rope["low_freq_factor"]))
        high = rope["high_freq_factor"]
        params.update({"rope_scaling_high_freq_factory": int(high)} if float(high).is_integer()
                      else {"rope_scaling_high_freq_factor_f32": float(high)})
        return params
    if kind == "yarn":
        original = int(rope["original_max_position_embeddings"])
        factor = rope.get("factor") or max_position / original
        attention_factor = rope.get("attention_factor")
        if attention_factor is None:
            mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
            attention_factor = (yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
                                if mscale and mscale_all_dim else yarn_mscale(factor))
        return {"rope_type": int(RopeType.YARN), "rope_scaling_factor_f32": float(factor),
                "rope_scaling_orig_max_seq_len": original,
                "yarn_beta_fast_f32": float(rope.get("beta_fast") or 32), "yarn_beta_slow_f32": float(rope.get("beta_slow") or 1),
                "yarn_attention_factor_f32": float(attention_factor), "yarn_truncate": int(rope.get("truncate", True))}
    raise UnsupportedModelError(f"rope type {kind!r} is not supported for {arch_name} (default, llama3 or yarn)")


def decoder_header(cfg: dict, arch: ArchType, *, allow_bias: bool = False) -> dict:
    """Header params for a dense decoder config (distributed-llama's keys where they can hold the values)."""
    name = arch.name.lower()
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModelError(f"hidden_act {act!r} is not supported (only silu)")
    if cfg.get("mlp_bias"):
        raise UnsupportedModelError(f"config.json sets mlp_bias=true, which the {name} architecture does not support")
    if cfg.get("attention_bias") and not allow_bias:
        raise UnsupportedModelError(f"config.json sets attention_bias=true, which the {name} architecture does not support")
    dim = _require(cfg, "hidden_size")
    n_heads = _require(cfg, "num_attention_heads")
    head_dim = cfg.get("head_dim") or dim // n_heads
    params = {
        "version": 0,
        "arch_type": int(arch),
        "hidden_act": int(HiddenAct.SILU),
        "dim": dim,
        "hidden_dim": _require(cfg, "intermediate_size"),
        "n_layers": _require(cfg, "num_hidden_layers"),
        "n_heads": n_heads,
        "n_kv_heads": cfg.get("num_key_value_heads") or n_heads,
        "max_seq_len": cfg.get("max_position_embeddings", 4096),
        "vocab_size": _require(cfg, "vocab_size"),
        "n_experts": 0,
        "n_active_experts": 0,
    }
    window = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    if window and window < params["max_seq_len"]:
        # Within the window, sliding-window attention is plain causal attention: cap the context there.
        params["max_seq_len"] = window
    rope = rope_parameters(cfg)
    params.update(_int_or_f32("rope_theta", rope["rope_theta"]))
    params.update(rope_scaling_params(rope, cfg.get("max_position_embeddings", 4096), name))
    params["head_dim"] = head_dim
    params.update(norm_epsilon_params(cfg.get("rms_norm_eps", 1e-5)))
    rope_dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    if rope_dim != head_dim:
        if rope_dim % 2:
            raise UnsupportedModelError(f"partial_rotary_factor gives an odd number of rotary dims ({rope_dim})")
        params["rope_dim"] = rope_dim
    if allow_bias:
        params["attention_bias"] = int(bool(cfg.get("attention_bias", False)))
    return params


def glm_config(cfg: dict) -> dict:
    """HF glm/glm4 configs, with the defaults transformers applies (biases, half rotary)."""
    rope = rope_parameters(cfg)
    return dict(cfg, attention_bias=cfg.get("attention_bias", True), head_dim=cfg.get("head_dim", 128),
                rope_parameters=dict(rope, partial_rotary_factor=rope.get("partial_rotary_factor", 0.5)),
                rope_scaling=None)


def chatglm_config(cfg: dict) -> dict:
    """The legacy remote-code ChatGLM config, renamed to HF glm keys."""
    unsupported = {"add_bias_linear": True, "rmsnorm": False, "apply_residual_connection_post_layernorm": True,
                   "post_layer_norm": False, "original_rope": False}
    for key, bad in unsupported.items():
        if cfg.get(key, not bad) == bad:
            raise UnsupportedModelError(f"chatglm config with {key}={bad} is not supported")
    if cfg.get("pre_seq_len"):
        raise UnsupportedModelError("chatglm P-tuning prefixes (pre_seq_len) are not supported")
    n_heads = _require(cfg, "num_attention_heads")
    return {
        "hidden_size": _require(cfg, "hidden_size"),
        "intermediate_size": _require(cfg, "ffn_hidden_size"),
        "num_hidden_layers": _require(cfg, "num_layers"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": cfg.get("multi_query_group_num", n_heads) if cfg.get("multi_query_attention") else n_heads,
        "head_dim": cfg.get("kv_channels") or cfg["hidden_size"] // n_heads,
        "vocab_size": cfg.get("padded_vocab_size") or _require(cfg, "vocab_size"),
        "max_position_embeddings": cfg.get("seq_length", 8192),
        "rms_norm_eps": cfg.get("layernorm_epsilon", 1e-5),
        "attention_bias": cfg.get("add_qkv_bias", False),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0 * cfg.get("rope_ratio", 1.0),
                            "partial_rotary_factor": 0.5},
    }


def qwen3_moe_header(cfg: dict) -> dict:
    if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
        raise UnsupportedModelError("qwen3_moe with dense layers (mlp_only_layers / decoder_sparse_step) is not supported")
    params = decoder_header(cfg, ArchType.QWEN3_MOE)
    params.update(n_experts=cfg.get("num_experts") or _require(cfg, "num_local_experts"), n_active_experts=_require(cfg, "num_experts_per_tok"),
                  moe_hidden_dim=_require(cfg, "moe_intermediate_size"))
    if not cfg.get("norm_topk_prob", False):
        params["norm_topk_prob"] = 0  # distributed-llama always renormalizes; this key says not to
    return params


def glm4_moe_header(cfg: dict) -> dict:
    n_heads = _require(cfg, "num_attention_heads")
    rope = rope_parameters(cfg)
    cfg = dict(cfg, head_dim=cfg.get("head_dim") or _require(cfg, "hidden_size") // n_heads, rope_scaling=None,
               rope_parameters=dict(rope, partial_rotary_factor=rope.get("partial_rotary_factor", 0.5)))
    params = decoder_header(cfg, ArchType.GLM4_MOE, allow_bias=True)
    n_experts = cfg.get("n_routed_experts") or _require(cfg, "num_local_experts")
    params.update(
        n_experts=n_experts,
        n_active_experts=_require(cfg, "num_experts_per_tok"),
        moe_hidden_dim=_require(cfg, "moe_intermediate_size"),
        n_shared_experts=cfg.get("n_shared_experts", 0) or 0,
        n_dense_layers=min(cfg.get("first_k_dense_replace", 0) or 0, params["n_layers"]),
        n_expert_groups=cfg.get("n_group", 1) or 1,
        topk_groups=cfg.get("topk_group", 1) or 1,
        routed_scaling_factor_f32=float(cfg.get("routed_scaling_factor", 1.0)),
        norm_topk_prob=int(bool(cfg.get("norm_topk_prob", True))),
        qk_norm=int(bool(cfg.get("use_qk_norm", False))),
    )
    return params


def glm4_moe_lite_header(cfg: dict) -> dict:
    n_layers = _require(cfg, "num_hidden_layers")
    kinds = cfg.get("mlp_layer_types") or (["dense"] * (cfg.get("first_k_dense_replace") or 0)
                                          + ["sparse"] * (n_layers - (cfg.get("first_k_dense_replace") or 0)))
    n_dense = kinds.index("sparse") if "sparse" in kinds else len(kinds)
    if len(kinds) != n_layers or any(k != "sparse" for k in kinds[n_dense:]):
        raise UnsupportedModelError(f"mlp_layer_types {kinds} is not supported: dense layers must all come first")
    rope = rope_parameters(cfg)
    nope, rope_dim = _require(cfg, "qk_nope_head_dim"), _require(cfg, "qk_rope_head_dim")
    scale = (nope + rope_dim) ** -0.5
    if rope["rope_type"] != "default" and rope.get("mscale_all_dim"):
        # DeepSeek-style YaRN also sharpens the softmax by mscale^2.
        factor = rope.get("factor") or cfg["max_position_embeddings"] / rope["original_max_position_embeddings"]
        scale *= yarn_mscale(factor, rope["mscale_all_dim"]) ** 2
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError("glm4_moe_lite with partial_rotary_factor != 1 is not supported")
    params = glm4_moe_header(dict(cfg, first_k_dense_replace=n_dense, head_dim=nope + rope_dim,
                                  rope_parameters=dict(rope, partial_rotary_factor=1.0), use_qk_norm=False))
    params.update(
        arch_type=int(ArchType.GLM4_MOE_LITE),
        n_kv_heads=params["n_heads"],
        rope_dim=rope_dim,
        q_lora_rank=cfg.get("q_lora_rank") or 0,
        kv_lora_rank=_require(cfg, "kv_lora_rank"),
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope_dim,
        v_head_dim=_require(cfg, "v_head_dim"),
        attention_scale_f32=scale,
        latent_norm_epsilon_f32=1e-6,  # transformers builds q_a/kv_a_layernorm with their default eps
    )
    return params


def compact_embedding_dtype(p: dict) -> FloatType:
    """Our architectures keep the embedding table in F16 unless the weights are F32 (distributed-llama
    always stores F32): one row is read per token, so this halves its memory at no cost in speed, and
    unlike a quantized table it adds no noise that could flip an MoE router's choice."""
    return FloatType.F32 if FloatType(p["weights_float_type"]) == FloatType.F32 else FloatType.F16


# ---------------------------------------------------------------------------------------------
# Tensor lists


@dataclass(frozen=True)
class Source:
    """Where a tensor comes from in the HF checkpoint: a tensor, or a range of its rows (fused
    weights such as GLM's gate_up_proj or ChatGLM's query_key_value are split this way)."""

    name: str
    rows: tuple[int, int] | None = None


def permute_for_interleaved_rope(n_heads: int) -> Transform:
    """HF stores Llama q/k for rotate-half RoPE; distributed-llama's LLAMA graph rotates adjacent
    pairs, so rows are reordered within each head: new row 2j = old j, new row 2j+1 = old j + d/2."""

    def permute(w: np.ndarray) -> np.ndarray:
        rows, cols = w.shape
        head_dim = rows // n_heads
        return w.reshape(n_heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)

    return permute


def split_kv_b(p: dict, part: str) -> Transform:
    """MLA's kv_b_proj holds, per head, nope rows of the key then v rows of the value, over the latent.
    The absorbed attention wants each head's key block transposed ([kv_lora x nope]: it maps a query
    into latent space) and each value block as is ([v x kv_lora])."""
    n, nope, v, kv_lora = p["n_heads"], p["qk_nope_head_dim"], p["v_head_dim"], p["kv_lora_rank"]

    def split(w: np.ndarray) -> np.ndarray:
        per_head = w.reshape(n, nope + v, kv_lora)
        if part == "k":
            return per_head[:, :nope, :].transpose(0, 2, 1).reshape(n * kv_lora, nope)
        return per_head[:, nope:, :].reshape(n * v, kv_lora)

    return split


def head_dim_of(p: dict) -> int:
    return p.get("head_dim") or p["dim"] // p["n_heads"]


_LLAMA_LAYER_NAMES = {
    "attn.q": "self_attn.q_proj.weight", "attn.k": "self_attn.k_proj.weight", "attn.v": "self_attn.v_proj.weight",
    "attn.o": "self_attn.o_proj.weight", "attn.q_bias": "self_attn.q_proj.bias", "attn.k_bias": "self_attn.k_proj.bias",
    "attn.v_bias": "self_attn.v_proj.bias", "attn.q_norm": "self_attn.q_norm.weight",
    "attn.k_norm": "self_attn.k_norm.weight", "ffn.gate": "mlp.gate_proj.weight", "ffn.up": "mlp.up_proj.weight",
    "ffn.down": "mlp.down_proj.weight", "moe.router": "mlp.gate.weight",
    "moe.router_bias": "mlp.gate.e_score_correction_bias", "attn_norm": "input_layernorm.weight",
    "ffn_norm": "post_attention_layernorm.weight", "post_attn_norm": "post_self_attn_layernorm.weight",
    "post_ffn_norm": "post_mlp_layernorm.weight",
    # multi-head latent attention
    "attn.q_a": "self_attn.q_a_proj.weight", "attn.q_a_bias": "self_attn.q_a_proj.bias",
    "attn.q_a_norm": "self_attn.q_a_layernorm.weight", "attn.q_b": "self_attn.q_b_proj.weight",
    "attn.kv_a": "self_attn.kv_a_proj_with_mqa.weight", "attn.kv_a_bias": "self_attn.kv_a_proj_with_mqa.bias",
    "attn.kv_a_norm": "self_attn.kv_a_layernorm.weight", "attn.k_b": "self_attn.kv_b_proj.weight",
    "attn.v_b": "self_attn.kv_b_proj.weight", "attn.o_bias": "self_attn.o_proj.bias",
}


def llama_names(p: dict, layer: int | None, role: str) -> Source:
    """HF names of Llama-style checkpoints (Qwen3, Qwen3-MoE, GLM-4.5 too; GLM and GLM-4 apart from
    their fused MLP). Roles are our tensor names without the "layers.N." prefix."""
    if layer is None:
        return Source({"embedding": "model.embed_tokens.weight", "final_norm": "model.norm.weight",
                       "lm_head": "lm_head.weight"}[role])
    prefix = f"model.layers.{layer}."
    if role.startswith("moe.experts."):  # moe.experts.E.gate -> mlp.experts.E.gate_proj.weight
        _, _, e, w = role.split(".")
        return Source(f"{prefix}mlp.experts.{e}.{w}_proj.weight")
    if role.startswith("moe.shared."):
        return Source(f"{prefix}mlp.shared_experts.{role.split('.')[-1]}_proj.weight")
    return Source(prefix + _LLAMA_LAYER_NAMES[role])


def glm_names(p: dict, layer: int | None, role: str) -> Source:
    """GLM / GLM-4: Llama names, with gate and up as the two halves of the fused gate_up_proj."""
    if layer is not None and role in ("ffn.gate", "ffn.up"):
        ff = p["hidden_dim"]
        return Source(f"model.layers.{layer}.mlp.gate_up_proj.weight", (0, ff) if role == "ffn.gate" else (ff, 2 * ff))
    return llama_names(p, layer, role)


def chatglm_names(p: dict, layer: int | None, role: str) -> Source:
    """The legacy remote-code ChatGLM layout (THUDM glm-4-9b-chat, chatglm3-6b): query_key_value rows
    are [q | k | v]; dense_h_to_4h rows are [gate | up]."""
    if layer is None:
        return Source({"embedding": "transformer.embedding.word_embeddings.weight",
                       "final_norm": "transformer.encoder.final_layernorm.weight",
                       "lm_head": "transformer.output_layer.weight"}[role])
    prefix = f"transformer.encoder.layers.{layer}."
    q_dim = p["n_heads"] * head_dim_of(p)
    kv_dim = p["n_kv_heads"] * head_dim_of(p)
    qkv_rows = {"q": (0, q_dim), "k": (q_dim, q_dim + kv_dim), "v": (q_dim + kv_dim, q_dim + 2 * kv_dim)}
    ff = p["hidden_dim"]
    if role in ("attn.q", "attn.k", "attn.v"):
        return Source(prefix + "self_attention.query_key_value.weight", qkv_rows[role[-1]])
    if role in ("attn.q_bias", "attn.k_bias", "attn.v_bias"):
        return Source(prefix + "self_attention.query_key_value.bias", qkv_rows[role[5]])
    if role in ("ffn.gate", "ffn.up"):
        return Source(prefix + "mlp.dense_h_to_4h.weight", (0, ff) if role == "ffn.gate" else (ff, 2 * ff))
    return Source(prefix + {"attn.o": "self_attention.dense.weight", "ffn.down": "mlp.dense_4h_to_h.weight",
                            "attn_norm": "input_layernorm.weight",
                            "ffn_norm": "post_attention_layernorm.weight"}[role])


def is_moe_layer(p: dict, layer: int) -> bool:
    return p.get("n_experts", 0) > 0 and layer >= p.get("n_dense_layers", 0)


def is_latent_attention(p: dict) -> bool:
    return p.get("kv_lora_rank", 0) > 0


def kv_cache_values_per_token(p: dict) -> int:
    """Values the KV cache holds per position, over all layers: keys and values of every KV head, or,
    with latent attention, only the compressed latent and the shared RoPE key."""
    if is_latent_attention(p):
        return p["n_layers"] * (p["kv_lora_rank"] + p["qk_rope_head_dim"])
    return p["n_layers"] * 2 * p["n_kv_heads"] * head_dim_of(p)


def attention_roles(p: dict) -> list[str]:
    if not is_latent_attention(p):
        return ["attn.q", "attn.k", "attn.v", "attn.o"]
    q = ["attn.q_a", "attn.q_a_norm", "attn.q_b"] if p.get("q_lora_rank") else ["attn.q"]
    return q + ["attn.kv_a", "attn.kv_a_norm", "attn.k_b", "attn.v_b", "attn.o"]


def layer_roles(p: dict, layer: int, *, qk_norm: bool, bias: bool, sandwich: bool, router_bias: bool) -> list[str]:
    """Layer `layer`'s tensors (names after "layers.N."), in file order: distributed-llama's for LLAMA,
    QWEN3 and QWEN3_MOE (attention, feed-forward or router then experts as gate/down/up, q/k norms,
    norms); our architectures append biases and sandwich norms."""
    roles = attention_roles(p)
    if is_moe_layer(p, layer):
        roles += ["moe.router"] + (["moe.router_bias"] if router_bias else [])
        for e in range(p["n_experts"]):
            roles += [f"moe.experts.{e}.gate", f"moe.experts.{e}.down", f"moe.experts.{e}.up"]
        if p.get("n_shared_experts", 0):
            roles += ["moe.shared.gate", "moe.shared.down", "moe.shared.up"]
    else:
        roles += ["ffn.gate", "ffn.down", "ffn.up"]
    roles += ["attn.q_norm", "attn.k_norm"] if qk_norm else []
    roles += ["attn_norm", "ffn_norm"]
    if bias and is_latent_attention(p):
        roles += (["attn.q_a_bias"] if p.get("q_lora_rank") else []) + ["attn.kv_a_bias", "attn.o_bias"]
    elif bias:
        roles += ["attn.q_bias", "attn.k_bias", "attn.v_bias"]
    roles += ["post_attn_norm", "post_ffn_norm"] if sandwich else []
    return roles


def role_shape(p: dict, role: str) -> tuple[int, int, FloatType | None]:
    """(rows, cols, stored type or None for the weight type) of a layer tensor."""
    dim, head_dim = p["dim"], head_dim_of(p)
    q_dim, kv_dim = p["n_heads"] * head_dim, p["n_kv_heads"] * head_dim
    f32 = FloatType.F32
    if is_latent_attention(p) and role.startswith("attn."):
        n, q_lora, kv_lora = p["n_heads"], p.get("q_lora_rank", 0), p["kv_lora_rank"]
        nope, rope, v = p["qk_nope_head_dim"], p["qk_rope_head_dim"], p["v_head_dim"]
        return {
            "attn.q": (n * (nope + rope), dim, None), "attn.q_a": (q_lora, dim, None), "attn.q_a_norm": (1, q_lora, f32),
            "attn.q_a_bias": (1, q_lora, f32), "attn.q_b": (n * (nope + rope), q_lora, None),
            "attn.kv_a": (kv_lora + rope, dim, None), "attn.kv_a_bias": (1, kv_lora + rope, f32),
            "attn.kv_a_norm": (1, kv_lora, f32), "attn.k_b": (n * kv_lora, nope, None),
            "attn.v_b": (n * v, kv_lora, None), "attn.o": (dim, n * v, None), "attn.o_bias": (1, dim, f32),
        }[role]
    if role.startswith(("moe.experts.", "moe.shared.", "ffn.")):
        if role.startswith("ffn."):
            width = p["hidden_dim"]
        elif role.startswith("moe.experts."):
            width = p["moe_hidden_dim"]
        else:
            width = p["moe_hidden_dim"] * p["n_shared_experts"]
        return (dim, width, None) if role.endswith("down") else (width, dim, None)
    return {
        "attn.q": (q_dim, dim, None), "attn.k": (kv_dim, dim, None), "attn.v": (kv_dim, dim, None),
        "attn.o": (dim, q_dim, None), "attn.q_norm": (1, head_dim, f32), "attn.k_norm": (1, head_dim, f32),
        "attn.q_bias": (1, q_dim, f32), "attn.k_bias": (1, kv_dim, f32), "attn.v_bias": (1, kv_dim, f32),
        "moe.router": (p.get("n_experts", 0), dim, f32), "moe.router_bias": (1, p.get("n_experts", 0), f32),
        "attn_norm": (1, dim, f32), "ffn_norm": (1, dim, f32), "post_attn_norm": (1, dim, f32),
        "post_ffn_norm": (1, dim, f32),
    }[role]


def decoder_tensors(p: dict, names, *, qk_norm=False, bias=False, sandwich=False, permute_qk=False,
                    router_bias=False, embedding_dtype: FloatType | None = FloatType.F32) -> list[TensorSpec]:
    """Every tensor of a decoder model in file order: embedding, each layer's, final norm, output head."""
    dim, vocab = p["dim"], p["vocab_size"]
    transforms, source_shapes = {}, {}
    if permute_qk:
        transforms = {"attn.q": permute_for_interleaved_rope(p["n_heads"]),
                      "attn.k": permute_for_interleaved_rope(p["n_kv_heads"])}
    if is_latent_attention(p):
        transforms = {"attn.k_b": split_kv_b(p, "k"), "attn.v_b": split_kv_b(p, "v")}
        kv_b_shape = (p["n_heads"] * (p["qk_nope_head_dim"] + p["v_head_dim"]), p["kv_lora_rank"])
        source_shapes = {"attn.k_b": kv_b_shape, "attn.v_b": kv_b_shape}

    def spec(name: str, rows: int, cols: int, dtype, src: Source, transform=None, fallback=None,
             source_shape=None) -> TensorSpec:
        return TensorSpec(name, rows, cols, dtype, src.name, transform, fallback, src.rows, source_shape)

    specs = [spec("embedding", vocab, dim, embedding_dtype, names(p, None, "embedding"))]
    for l in range(p["n_layers"]):
        for role in layer_roles(p, l, qk_norm=qk_norm, bias=bias, sandwich=sandwich, router_bias=router_bias):
            rows, cols, dtype = role_shape(p, role)
            specs.append(spec(f"layers.{l}.{role}", rows, cols, dtype, names(p, l, role), transforms.get(role),
                              source_shape=source_shapes.get(role)))
    specs.append(spec("final_norm", 1, dim, FloatType.F32, names(p, None, "final_norm")))
    specs.append(spec("lm_head", vocab, dim, None, names(p, None, "lm_head"),
                      fallback=names(p, None, "embedding").name))
    return specs


# ---------------------------------------------------------------------------------------------
# The table


@dataclass(frozen=True)
class Architecture:
    arch_type: ArchType
    builder: str  # C++ graph builder (cpp/models/builders.h)
    model_types: tuple[str, ...]  # HF config.json model_type values
    rope_style: str  # "interleaved" pairs (2j, 2j+1) or "halves" (j, j + rope_dim/2)
    header_from_config: Callable[[dict], dict]
    tensors: Callable[[dict, Callable], list[TensorSpec]]  # (header params, HF naming) -> .m tensors
    hf_names: Callable[[dict, int | None, str], Source]  # (params, layer or None, role) -> HF source


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        ArchType.LLAMA,
        "llama",
        ("llama", "mistral"),
        "interleaved",
        lambda cfg: decoder_header(cfg, ArchType.LLAMA),
        lambda p, names: decoder_tensors(p, names, permute_qk=True),
        llama_names,
    ),
    Architecture(
        ArchType.QWEN3,
        "qwen3",
        ("qwen3",),
        "halves",
        lambda cfg: decoder_header(cfg, ArchType.QWEN3),
        lambda p, names: decoder_tensors(p, names, qk_norm=True),
        llama_names,
    ),
    Architecture(
        ArchType.GLM,
        "glm",
        ("glm",),
        "interleaved",
        lambda cfg: decoder_header(glm_config(cfg), ArchType.GLM, allow_bias=True),
        lambda p, names: decoder_tensors(p, names, bias=bool(p.get("attention_bias")),
                                         embedding_dtype=compact_embedding_dtype(p)),
        glm_names,
    ),
    Architecture(
        ArchType.GLM4,
        "glm4",
        ("glm4",),
        "interleaved",
        lambda cfg: decoder_header(glm_config(cfg), ArchType.GLM4, allow_bias=True),
        lambda p, names: decoder_tensors(p, names, bias=bool(p.get("attention_bias")), sandwich=True,
                                         embedding_dtype=compact_embedding_dtype(p)),
        glm_names,
    ),
    Architecture(
        ArchType.QWEN3_MOE,
        "qwen3_moe",
        ("qwen3_moe",),
        "halves",
        qwen3_moe_header,
        lambda p, names: decoder_tensors(p, names, qk_norm=True),
        llama_names,
    ),
    Architecture(
        ArchType.GLM4_MOE,
        "glm4_moe",
        ("glm4_moe",),
        "halves",
        glm4_moe_header,
        lambda p, names: decoder_tensors(p, names, qk_norm=bool(p.get("qk_norm")), bias=bool(p.get("attention_bias")),
                                         router_bias=True, embedding_dtype=compact_embedding_dtype(p)),
        llama_names,
    ),
    Architecture(
        ArchType.GLM4_MOE_LITE,
        "glm4_moe_lite",
        ("glm4_moe_lite",),
        "interleaved",
        glm4_moe_lite_header,
        lambda p, names: decoder_tensors(p, names, bias=bool(p.get("attention_bias")), router_bias=True,
                                         embedding_dtype=compact_embedding_dtype(p)),
        llama_names,
    ),
)

# Checkpoints in another layout that convert to one of the architectures above: model_type ->
# (the architecture's model_type, config translation, HF tensor names).
LEGACY_LAYOUTS = {
    "chatglm": ("glm", chatglm_config, chatglm_names),
}


def supported_model_types() -> list[str]:
    return sorted([t for a in ARCHITECTURES for t in a.model_types] + list(LEGACY_LAYOUTS))


@dataclass
class ConversionPlan:
    arch: Architecture
    params: dict  # header params (without weights_float_type)
    names: Callable[[dict, int | None, str], Source]

    def tensors(self, weight_type: FloatType) -> list[TensorSpec]:
        return self.arch.tensors(dict(self.params, weights_float_type=int(weight_type)), self.names)


def plan_conversion(config: dict) -> ConversionPlan:
    """Which architecture, header and HF tensor names a checkpoint's config.json leads to."""
    model_type = config.get("model_type")
    if model_type is None:
        raise UnsupportedModelError("config.json has no model_type")
    if model_type in LEGACY_LAYOUTS:
        target, translate, names = LEGACY_LAYOUTS[model_type]
        arch = for_model_type(target)
        return ConversionPlan(arch, arch.header_from_config(translate(config)), names)
    arch = for_model_type(model_type)
    return ConversionPlan(arch, arch.header_from_config(config), arch.hf_names)


def for_model_type(model_type: str) -> Architecture:
    for arch in ARCHITECTURES:
        if model_type in arch.model_types:
            return arch
    raise UnsupportedModelError(
        f"model_type {model_type!r} is not supported; supported: {', '.join(supported_model_types())}"
    )


def for_arch_type(arch_type: int, path: str | os.PathLike = "") -> Architecture:
    for arch in ARCHITECTURES:
        if arch.arch_type == arch_type:
            return arch
    raise ModelFileError(f"{path}: unknown architecture id {arch_type:#x} in header key arch_type")


# ---------------------------------------------------------------------------------------------
# A .m file's layout


@dataclass
class PlacedTensor:
    spec: TensorSpec
    dtype: FloatType
    offset: int
    nbytes: int


@dataclass
class ModelLayout:
    path: Path
    arch: Architecture
    header: Header
    weight_type: FloatType
    tensors: list[PlacedTensor]

    @property
    def params(self) -> dict:
        return self.header.params


def place_tensors(specs: list[TensorSpec], weight_type: FloatType, start: int) -> list[PlacedTensor]:
    placed, offset = [], start
    for spec in specs:
        dtype = spec.dtype if spec.dtype is not None else weight_type
        n = dtype.nbytes(spec.rows * spec.cols)
        placed.append(PlacedTensor(spec, dtype, offset, n))
        offset += n
    return placed


def read_layout(path: str | os.PathLike) -> ModelLayout:
    """Reads a .m header and checks that the file holds exactly the tensors its architecture needs."""
    path = Path(path)
    header = read_header(path)
    p = header.params
    for key in ("arch_type", "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "weights_float_type"):
        if key not in p:
            raise ModelFileError(f"{path}: header has no {key!r}")
    arch = for_arch_type(p["arch_type"], path)
    try:
        weight_type = FloatType(p["weights_float_type"])
    except ValueError:
        raise ModelFileError(f"{path}: unknown weights_float_type {p['weights_float_type']}") from None
    if "norm_epsilon" in p and p["norm_epsilon"] not in NORM_EPSILON_CODES:
        raise ModelFileError(f"{path}: unsupported norm_epsilon code {p['norm_epsilon']} (5 or 6)")
    try:
        tensors = place_tensors(arch.tensors(p, arch.hf_names), weight_type, header.size)
    except ValueError as e:
        raise ModelFileError(f"{path}: {e}") from None
    size = path.stat().st_size
    end = tensors[-1].offset + tensors[-1].nbytes
    if size < end:
        first_missing = next(t for t in tensors if t.offset + t.nbytes > size)
        raise ModelFileError(
            f"{path}: truncated: {size} bytes, but the {arch.builder} tensors need {end}; "
            f"tensor {first_missing.spec.name!r} (from byte {first_missing.offset}) is incomplete"
        )
    if size > end:
        raise ModelFileError(f"{path}: {size - end} unexpected bytes after the last tensor (expected {end} bytes in all)")
    return ModelLayout(path, arch, header, weight_type, tensors)
