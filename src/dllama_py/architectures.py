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


def llama_header(cfg: dict, arch: ArchType) -> dict:
    """Header params for a Llama/Mistral/Qwen3 config (distributed-llama's keys only where possible)."""
    act = cfg.get("hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedModelError(f"hidden_act {act!r} is not supported (only silu)")
    for flag in ("attention_bias", "mlp_bias"):
        if cfg.get(flag):
            raise UnsupportedModelError(f"config.json sets {flag}=true, which the {arch.name.lower()} architecture does not support")
    dim = _require(cfg, "hidden_size")
    n_heads = _require(cfg, "num_attention_heads")
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
    rope = rope_parameters(cfg)
    params.update(_int_or_f32("rope_theta", rope["rope_theta"]))
    if rope["rope_type"] == "llama3":
        params.update(_int_or_f32("rope_scaling_factor", rope["factor"]))
        params.update(_int_or_f32("rope_scaling_low_freq_factor", rope["low_freq_factor"]))
        high = rope["high_freq_factor"]
        params.update({"rope_scaling_high_freq_factory": int(high)} if float(high).is_integer() else {"rope_scaling_high_freq_factor_f32": float(high)})
        params["rope_scaling_orig_max_seq_len"] = int(rope["original_max_position_embeddings"])
        params["rope_type"] = int(RopeType.LLAMA3_1)
    elif rope["rope_type"] != "default":
        raise UnsupportedModelError(f"rope type {rope['rope_type']!r} is not supported for {arch.name.lower()} (default or llama3)")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise UnsupportedModelError(f"partial_rotary_factor {rope['partial_rotary_factor']} is not supported for {arch.name.lower()}")
    params["head_dim"] = cfg.get("head_dim") or dim // n_heads
    params.update(norm_epsilon_params(cfg.get("rms_norm_eps", 1e-5)))
    return params


# ---------------------------------------------------------------------------------------------
# Tensor lists


def permute_for_interleaved_rope(n_heads: int) -> Transform:
    """HF stores Llama q/k for rotate-half RoPE; distributed-llama's LLAMA graph rotates adjacent
    pairs, so rows are reordered within each head: new row 2j = old j, new row 2j+1 = old j + d/2."""

    def permute(w: np.ndarray) -> np.ndarray:
        rows, cols = w.shape
        head_dim = rows // n_heads
        return w.reshape(n_heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(rows, cols)

    return permute


def llama_tensors(p: dict, *, qk_norm: bool, permute_qk: bool) -> list[TensorSpec]:
    """distributed-llama's tensor order for LLAMA and QWEN3."""
    dim, ff, vocab = p["dim"], p["hidden_dim"], p["vocab_size"]
    head_dim = p.get("head_dim") or dim // p["n_heads"]
    q_dim, kv_dim = p["n_heads"] * head_dim, p["n_kv_heads"] * head_dim
    q_perm = permute_for_interleaved_rope(p["n_heads"]) if permute_qk else None
    k_perm = permute_for_interleaved_rope(p["n_kv_heads"]) if permute_qk else None
    f32 = FloatType.F32
    specs = [TensorSpec("embedding", vocab, dim, f32, "model.embed_tokens.weight")]
    for l in range(p["n_layers"]):
        hf, us = f"model.layers.{l}.", f"layers.{l}."
        specs += [
            TensorSpec(us + "attn.q", q_dim, dim, None, hf + "self_attn.q_proj.weight", q_perm),
            TensorSpec(us + "attn.k", kv_dim, dim, None, hf + "self_attn.k_proj.weight", k_perm),
            TensorSpec(us + "attn.v", kv_dim, dim, None, hf + "self_attn.v_proj.weight"),
            TensorSpec(us + "attn.o", dim, q_dim, None, hf + "self_attn.o_proj.weight"),
            TensorSpec(us + "ffn.gate", ff, dim, None, hf + "mlp.gate_proj.weight"),
            TensorSpec(us + "ffn.down", dim, ff, None, hf + "mlp.down_proj.weight"),
            TensorSpec(us + "ffn.up", ff, dim, None, hf + "mlp.up_proj.weight"),
        ]
        if qk_norm:
            specs += [
                TensorSpec(us + "attn.q_norm", 1, head_dim, f32, hf + "self_attn.q_norm.weight"),
                TensorSpec(us + "attn.k_norm", 1, head_dim, f32, hf + "self_attn.k_norm.weight"),
            ]
        specs += [
            TensorSpec(us + "attn_norm", 1, dim, f32, hf + "input_layernorm.weight"),
            TensorSpec(us + "ffn_norm", 1, dim, f32, hf + "post_attention_layernorm.weight"),
        ]
    specs += [
        TensorSpec("final_norm", 1, dim, f32, "model.norm.weight"),
        TensorSpec("lm_head", vocab, dim, None, "lm_head.weight", fallback="model.embed_tokens.weight"),
    ]
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
    tensors: Callable[[dict], list[TensorSpec]]


ARCHITECTURES: tuple[Architecture, ...] = (
    Architecture(
        ArchType.LLAMA,
        "llama",
        ("llama", "mistral"),
        "interleaved",
        lambda cfg: llama_header(cfg, ArchType.LLAMA),
        lambda p: llama_tensors(p, qk_norm=False, permute_qk=True),
    ),
    Architecture(
        ArchType.QWEN3,
        "qwen3",
        ("qwen3",),
        "halves",
        lambda cfg: llama_header(cfg, ArchType.QWEN3),
        lambda p: llama_tensors(p, qk_norm=True, permute_qk=False),
    ),
)


def supported_model_types() -> list[str]:
    return sorted(t for a in ARCHITECTURES for t in a.model_types)


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
        tensors = place_tensors(arch.tensors(p), weight_type, header.size)
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
