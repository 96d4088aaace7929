"""The architecture table: which HF `model_type` maps to which .m arch id, C++ graph builder, header
fields (hf_config.py) and tensor list (tensor_lists.py). The converter writes tensors in the order the
entry's `tensors` gives and the engine reads them back by the same list, so this table is the one place
both sides agree on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .hf_config import (
    UnsupportedModelError,
    chatglm_config,
    compact_embedding_dtype,
    decoder_header,
    glm4_moe_header,
    glm4_moe_lite_header,
    glm_config,
    qwen3_moe_header,
)
from .header_rules import check_header
from .model_file import TENSOR_TYPE_KEYS, ArchType, FloatType, Header, ModelFileError, read_header
from .tensor_lists import (
    Source,
    TensorSpec,
    chatglm_names,
    decoder_tensors,
    glm_names,
    kv_cache_values_per_token,
    llama_names,
)

__all__ = ["ARCHITECTURES", "Architecture", "ModelLayout", "UnsupportedModelError", "kv_cache_values_per_token",
           "plan_conversion", "read_layout", "supported_model_types"]


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
    # Header keys beyond the common ones (header_rules.py): those a file must carry, and the optional
    # ones this architecture reads; any other architecture's keys are refused.
    required_keys: tuple[str, ...] = ()
    optional_keys: tuple[str, ...] = ()


MOE_KEYS = ("n_experts", "n_active_experts", "moe_hidden_dim")
GLM_MOE_KEYS = ("attention_bias", "n_shared_experts", "n_dense_layers", "n_expert_groups", "topk_groups",
                "routed_scaling_factor_f32", "norm_topk_prob")
LATENT_KEYS = ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")


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
        optional_keys=("attention_bias",),
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
        optional_keys=("attention_bias",),
    ),
    Architecture(
        ArchType.QWEN3_MOE,
        "qwen3_moe",
        ("qwen3_moe",),
        "halves",
        qwen3_moe_header,
        lambda p, names: decoder_tensors(p, names, qk_norm=True),
        llama_names,
        required_keys=MOE_KEYS,
        optional_keys=("norm_topk_prob",),
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
        required_keys=MOE_KEYS,
        optional_keys=GLM_MOE_KEYS + ("qk_norm",),
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
        required_keys=MOE_KEYS + LATENT_KEYS,
        optional_keys=GLM_MOE_KEYS + ("q_lora_rank", "attention_scale_f32", "latent_norm_epsilon_f32"),
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


def plan_conversion(config: dict, mtp: bool = True) -> ConversionPlan:
    """Which architecture, header and HF tensor names a checkpoint's config.json leads to; mtp=False
    leaves out the multi-token-prediction layer."""
    model_type = config.get("model_type")
    if model_type is None:
        raise UnsupportedModelError("config.json has no model_type")
    if not isinstance(model_type, str):
        raise UnsupportedModelError(f"config.json: model_type = {model_type!r} is not a string")
    if model_type in LEGACY_LAYOUTS:
        target, translate, names = LEGACY_LAYOUTS[model_type]
        arch = for_model_type(target)
        plan = ConversionPlan(arch, arch.header_from_config(translate(config)), names)
    else:
        arch = for_model_type(model_type)
        plan = ConversionPlan(arch, arch.header_from_config(config), arch.hf_names)
    if not mtp:
        plan.params.pop("n_mtp_layers", None)
    return plan


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


def default_tensor_type(spec: TensorSpec, weight_type: FloatType) -> FloatType:
    """The architecture's rule for a tensor's storage type: the type its tensor list gives (norms and
    routers F32, embeddings by compact_embedding_dtype), else the file's weight type. A file stores
    another type for a tensor only with a per-tensor header key (model_file.TENSOR_TYPE_KEYS)."""
    return spec.dtype if spec.dtype is not None else weight_type


def place_tensors(specs: list[TensorSpec], types: list[FloatType], start: int) -> list[PlacedTensor]:
    placed, offset = [], start
    for spec, dtype in zip(specs, types):
        n = dtype.nbytes(spec.rows * spec.cols)
        placed.append(PlacedTensor(spec, dtype, offset, n))
        offset += n
    return placed


def read_layout(path: str | os.PathLike) -> ModelLayout:
    """Reads a .m header and checks that the file holds exactly the tensors its architecture needs."""
    path = Path(path)
    header = read_header(path)
    p = header.params
    if "arch_type" not in p:
        raise ModelFileError(f"{path}: header has no 'arch_type'")
    arch = for_arch_type(p["arch_type"], path)
    size = path.stat().st_size
    check_header(p, arch, str(path), size - header.size)
    weight_type = FloatType(p["weights_float_type"])
    specs = arch.tensors(p, arch.hf_names)
    for index in header.tensor_types:
        if index >= len(specs):
            raise ModelFileError(f"{path}: header key {TENSOR_TYPE_KEYS + index} gives a type for tensor {index}, "
                                 f"but the {arch.builder} model has {len(specs)} tensors")
    types = [header.tensor_types.get(i, default_tensor_type(spec, weight_type)) for i, spec in enumerate(specs)]
    for spec, dtype in zip(specs, types):
        if spec.cols % dtype.block_size:
            raise ModelFileError(f"{path}: tensor {spec.name!r} is stored as {dtype.name}, but its rows of {spec.cols} "
                                 f"values are not whole {dtype.block_size}-value blocks (convert the model again)")
    tensors = place_tensors(specs, types, header.size)
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
