"""HF config.json -> .m header fields, for every supported model_type (both config styles:
transformers 5's `rope_parameters` and the older top-level rope keys; legacy ChatGLM key names)."""

from __future__ import annotations

from .model_file import NORM_EPSILON_CODES, ArchType, FloatType, HiddenAct, RopeType
from .rope import yarn_mscale


class UnsupportedModelError(ValueError):
    """An HF checkpoint this package cannot convert; the message says why."""


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
    if cfg.get("num_nextn_predict_layers"):
        # GLM ships one MTP layer; with more (none so far), the first is kept and drafts further by itself.
        params["n_mtp_layers"] = 1
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
