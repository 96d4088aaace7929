"""HF config.json -> .m header fields, for every supported model_type (both config styles:
transformers 5's `rope_parameters` and the older top-level rope keys; legacy ChatGLM key names)."""

from __future__ import annotations

import math

from .model_file import NORM_EPSILON_CODES, ArchType, FloatType, HiddenAct, RopeType
from .rope import yarn_mscale

INT32_MAX = 2**31 - 1


class UnsupportedModelError(ValueError):
    """An HF checkpoint this package cannot convert; the message says why."""


# ------------------------------------------------------------------------------------------------
# Reading config values: every value is type- and range-checked where it is read, and an error names
# the key (config.json is untrusted input: a string, NaN or -1 must not reach the arithmetic below).

_REQUIRED = object()


def _missing(key: str, default, section: str):
    if default is _REQUIRED:
        raise UnsupportedModelError(f"config.json has no {section}{key!r}")
    return default


def _int(cfg: dict, key: str, default=_REQUIRED, minimum: int = 1, section: str = ""):
    """An integer >= minimum (integral floats such as 4096.0 too); default when absent or null."""
    value = cfg.get(key)
    if value is None:
        return _missing(key, default, section)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise UnsupportedModelError(f"config.json: {section}{key} = {value!r} is not an integer")
    if not minimum <= value <= INT32_MAX:
        raise UnsupportedModelError(f"config.json: {section}{key} = {value!r} must be between {minimum} and {INT32_MAX}")
    return int(value)


def _number(cfg: dict, key: str, default=_REQUIRED, minimum: float = 0.0, section: str = "",
            maximum: float = math.inf):
    """A finite number above minimum (and at most maximum); default when absent or null."""
    value = cfg.get(key)
    if value is None:
        return _missing(key, default, section)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UnsupportedModelError(f"config.json: {section}{key} = {value!r} is not a finite number")
    if not minimum < value <= maximum:
        bound = f"above {minimum:g}" + ("" if maximum == math.inf else f" and at most {maximum:g}")
        raise UnsupportedModelError(f"config.json: {section}{key} = {value!r} must be {bound}")
    return float(value)


def _flag(cfg: dict, key: str, default: bool) -> bool:
    value = cfg.get(key)
    if value is None:
        return default
    if value not in (True, False):  # also 0 and 1
        raise UnsupportedModelError(f"config.json: {key} = {value!r} is not true or false")
    return bool(value)


def _section(cfg: dict, key: str) -> dict:
    value = cfg.get(key)
    if value is not None and not isinstance(value, dict):
        raise UnsupportedModelError(f"config.json: {key} = {value!r} is not an object")
    return value or {}


# RoPE values as (minimum: a number must be above it; None: an integer of at least 1).
_ROPE_VALUES = {"rope_theta": 0.0, "factor": 0.0, "low_freq_factor": 0.0, "high_freq_factor": 0.0,
                "attention_factor": 0.0, "beta_fast": -1e-30, "beta_slow": -1e-30, "mscale": -1e-30,
                "mscale_all_dim": -1e-30, "partial_rotary_factor": 0.0, "original_max_position_embeddings": None}


def rope_parameters(cfg: dict) -> dict:
    """RoPE settings from either config style: transformers 5's `rope_parameters` or the older
    top-level `rope_theta` / `rope_scaling` / `partial_rotary_factor`."""
    sources = [("rope_parameters.", _section(cfg, "rope_parameters")), ("", cfg), ("rope_scaling.", _section(cfg, "rope_scaling"))]
    for section, values in sources:  # the values each place gives, checked where they are
        for key, minimum in _ROPE_VALUES.items():
            if minimum is None:
                _int(values, key, None, section=section)
            else:
                _number(values, key, None, minimum, section, maximum=1.0 if key == "partial_rotary_factor" else math.inf)
    rope = dict(_section(cfg, "rope_parameters"))
    if rope.get("rope_theta") is None:
        rope["rope_theta"] = _number(cfg, "rope_theta", 10000.0)
    rope.update(_section(cfg, "rope_scaling"))
    if "partial_rotary_factor" not in rope and "partial_rotary_factor" in cfg:
        rope["partial_rotary_factor"] = cfg["partial_rotary_factor"]
    rope = {key: value for key, value in rope.items() if value is not None}  # null: the default
    rope["rope_type"] = rope.get("rope_type", rope.get("type", "default"))
    return rope


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
                  "rope_scaling_orig_max_seq_len": _int(rope, "original_max_position_embeddings", section="rope ")}
        params.update(_int_or_f32("rope_scaling_factor", _number(rope, "factor", section="rope ")))
        low = _number(rope, "low_freq_factor", section="rope ")
        params.update(_int_or_f32("rope_scaling_low_freq_factor", low))
        high = _number(rope, "high_freq_factor", section="rope ")
        if high <= low:
            raise UnsupportedModelError(f"config.json: rope high_freq_factor = {high:g} must be above "
                                        f"low_freq_factor = {low:g}")
        params.update({"rope_scaling_high_freq_factory": int(high)} if float(high).is_integer()
                      else {"rope_scaling_high_freq_factor_f32": float(high)})
        return params
    if kind == "yarn":
        original = _int(rope, "original_max_position_embeddings", section="rope ")
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
    if _flag(cfg, "mlp_bias", False):
        raise UnsupportedModelError(f"config.json sets mlp_bias=true, which the {name} architecture does not support")
    if _flag(cfg, "attention_bias", False) and not allow_bias:
        raise UnsupportedModelError(f"config.json sets attention_bias=true, which the {name} architecture does not support")
    dim = _int(cfg, "hidden_size")
    n_heads = _int(cfg, "num_attention_heads")
    n_kv_heads = _int(cfg, "num_key_value_heads", n_heads)
    if n_heads % n_kv_heads:
        raise UnsupportedModelError(f"config.json: num_key_value_heads = {n_kv_heads} does not divide "
                                    f"num_attention_heads = {n_heads}")
    head_dim = _int(cfg, "head_dim", None)
    if head_dim is None:
        if dim % n_heads:
            raise UnsupportedModelError(f"config.json: hidden_size = {dim} is not a multiple of num_attention_heads "
                                        f"= {n_heads}, and there is no head_dim")
        head_dim = dim // n_heads
    max_position = _int(cfg, "max_position_embeddings", 4096)
    params = {
        "version": 0,
        "arch_type": int(arch),
        "hidden_act": int(HiddenAct.SILU),
        "dim": dim,
        "hidden_dim": _int(cfg, "intermediate_size"),
        "n_layers": _int(cfg, "num_hidden_layers"),
        "n_heads": n_heads,
        "n_kv_heads": n_kv_heads,
        "max_seq_len": max_position,
        "vocab_size": _int(cfg, "vocab_size"),
        "n_experts": 0,
        "n_active_experts": 0,
    }
    window = _int(cfg, "sliding_window", None) if _flag(cfg, "use_sliding_window", True) else None
    if window and window < params["max_seq_len"]:
        # Within the window, sliding-window attention is plain causal attention: cap the context there.
        params["max_seq_len"] = window
    rope = rope_parameters(cfg)
    params.update(_int_or_f32("rope_theta", rope["rope_theta"]))
    params.update(rope_scaling_params(rope, max_position, name))
    params["head_dim"] = head_dim
    params.update(norm_epsilon_params(_number(cfg, "rms_norm_eps", 1e-5)))
    rope_dim = int(head_dim * rope.get("partial_rotary_factor", 1.0))
    if rope_dim != head_dim:
        if rope_dim % 2 or rope_dim < 2:
            raise UnsupportedModelError(f"config.json: partial_rotary_factor = {rope['partial_rotary_factor']!r} "
                                        f"gives {rope_dim} rotary dims of head_dim = {head_dim} (an even number "
                                        "from 2 is needed)")
        params["rope_dim"] = rope_dim
    if allow_bias:
        params["attention_bias"] = int(_flag(cfg, "attention_bias", False))
    return params


def glm_config(cfg: dict) -> dict:
    """HF glm/glm4 configs, with the defaults transformers applies (biases, half rotary)."""
    rope = rope_parameters(cfg)
    return dict(cfg, attention_bias=_flag(cfg, "attention_bias", True), head_dim=cfg.get("head_dim", 128),
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
    n_heads = _int(cfg, "num_attention_heads")
    return {
        "hidden_size": _int(cfg, "hidden_size"),
        "intermediate_size": _int(cfg, "ffn_hidden_size"),
        "num_hidden_layers": _int(cfg, "num_layers"),
        "num_attention_heads": n_heads,
        "num_key_value_heads": _int(cfg, "multi_query_group_num", n_heads) if cfg.get("multi_query_attention") else n_heads,
        "head_dim": _int(cfg, "kv_channels", None),
        "vocab_size": _int(cfg, "padded_vocab_size", None) or _int(cfg, "vocab_size"),
        "max_position_embeddings": _int(cfg, "seq_length", 8192),
        "rms_norm_eps": _number(cfg, "layernorm_epsilon", 1e-5),
        "attention_bias": _flag(cfg, "add_qkv_bias", False),
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0 * _number(cfg, "rope_ratio", 1.0),
                            "partial_rotary_factor": 0.5},
    }


def _experts(cfg: dict, *keys: str) -> int:
    """The routed expert count, under whichever of keys the config uses."""
    for key in keys:
        if cfg.get(key) is not None:
            return _int(cfg, key)
    raise UnsupportedModelError(f"config.json has no {keys[0]!r}")


def qwen3_moe_header(cfg: dict) -> dict:
    if cfg.get("mlp_only_layers") or cfg.get("decoder_sparse_step", 1) != 1:
        raise UnsupportedModelError("qwen3_moe with dense layers (mlp_only_layers / decoder_sparse_step) is not supported")
    params = decoder_header(cfg, ArchType.QWEN3_MOE)
    params.update(n_experts=_experts(cfg, "num_experts", "num_local_experts"),
                  n_active_experts=_int(cfg, "num_experts_per_tok"), moe_hidden_dim=_int(cfg, "moe_intermediate_size"))
    if not _flag(cfg, "norm_topk_prob", False):
        params["norm_topk_prob"] = 0  # distributed-llama always renormalizes; this key says not to
    return params


def glm4_moe_header(cfg: dict) -> dict:
    n_heads = _int(cfg, "num_attention_heads")
    rope = rope_parameters(cfg)
    cfg = dict(cfg, head_dim=_int(cfg, "head_dim", None) or _int(cfg, "hidden_size") // n_heads, rope_scaling=None,
               rope_parameters=dict(rope, partial_rotary_factor=rope.get("partial_rotary_factor", 0.5)))
    params = decoder_header(cfg, ArchType.GLM4_MOE, allow_bias=True)
    params.update(
        n_experts=_experts(cfg, "n_routed_experts", "num_local_experts"),
        n_active_experts=_int(cfg, "num_experts_per_tok"),
        moe_hidden_dim=_int(cfg, "moe_intermediate_size"),
        n_shared_experts=_int(cfg, "n_shared_experts", 0, minimum=0),
        n_dense_layers=min(_int(cfg, "first_k_dense_replace", 0, minimum=0), params["n_layers"]),
        n_expert_groups=_int(cfg, "n_group", 1),
        topk_groups=_int(cfg, "topk_group", 1),
        routed_scaling_factor_f32=_number(cfg, "routed_scaling_factor", 1.0),
        norm_topk_prob=int(_flag(cfg, "norm_topk_prob", True)),
        qk_norm=int(_flag(cfg, "use_qk_norm", False)),
    )
    if cfg.get("num_nextn_predict_layers"):
        # GLM ships one MTP layer; with more (none so far), the first is kept and drafts further by itself.
        params["n_mtp_layers"] = 1
    return params


def glm4_moe_lite_header(cfg: dict) -> dict:
    n_layers = _int(cfg, "num_hidden_layers")
    first_dense = _int(cfg, "first_k_dense_replace", 0, minimum=0)
    kinds = cfg.get("mlp_layer_types") or ["dense"] * first_dense + ["sparse"] * (n_layers - first_dense)
    if not isinstance(kinds, list) or len(kinds) != n_layers or any(k not in ("dense", "sparse") for k in kinds):
        raise UnsupportedModelError(f"config.json: mlp_layer_types = {kinds!r} is not a list of 'dense' and 'sparse' "
                                    f"for each of the {n_layers} layers")
    n_dense = kinds.index("sparse") if "sparse" in kinds else len(kinds)
    if any(k != "sparse" for k in kinds[n_dense:]):
        raise UnsupportedModelError(f"mlp_layer_types {kinds} is not supported: dense layers must all come first")
    rope = rope_parameters(cfg)
    nope, rope_dim = _int(cfg, "qk_nope_head_dim"), _int(cfg, "qk_rope_head_dim")
    scale = (nope + rope_dim) ** -0.5
    if rope["rope_type"] != "default" and rope.get("mscale_all_dim"):
        # DeepSeek-style YaRN also sharpens the softmax by mscale^2.
        factor = rope.get("factor") or (_int(cfg, "max_position_embeddings")
                                        / _int(rope, "original_max_position_embeddings", section="rope "))
        scale *= yarn_mscale(factor, rope["mscale_all_dim"]) ** 2
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError("glm4_moe_lite with partial_rotary_factor != 1 is not supported")
    params = glm4_moe_header(dict(cfg, first_k_dense_replace=n_dense, head_dim=nope + rope_dim,
                                  rope_parameters=dict(rope, partial_rotary_factor=1.0), use_qk_norm=False))
    params.update(
        arch_type=int(ArchType.GLM4_MOE_LITE),
        n_kv_heads=params["n_heads"],
        rope_dim=rope_dim,
        q_lora_rank=_int(cfg, "q_lora_rank", 0, minimum=0),
        kv_lora_rank=_int(cfg, "kv_lora_rank"),
        qk_nope_head_dim=nope,
        qk_rope_head_dim=rope_dim,
        v_head_dim=_int(cfg, "v_head_dim"),
        attention_scale_f32=scale,
        latent_norm_epsilon_f32=1e-6,  # transformers builds q_a/kv_a_layernorm with their default eps
    )
    return params


def compact_embedding_dtype(p: dict) -> FloatType:
    """Our architectures keep the embedding table in F16 unless the weights are F32 (distributed-llama
    always stores F32): one row is read per token, so this halves its memory at no cost in speed, and
    unlike a quantized table it adds no noise that could flip an MoE router's choice."""
    return FloatType.F32 if FloatType(p["weights_float_type"]) == FloatType.F32 else FloatType.F16
