"""The .m model file: distributed-llama's header and tensor encodings, plus our extension keys.

Layout: int32 magic, int32 header size (bytes, counting magic and itself), then (key, value) int32
pairs, then the tensors back to back in the order the architecture table gives. See docs/model-format.md.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

MAGIC = 0x0A00ABCD
OLD_MAGICS = (0xABCD00, 0xABCD01)


class FloatType(IntEnum):
    F32 = 0
    F16 = 1
    Q40 = 2
    Q80 = 3

    @classmethod
    def parse(cls, name: str) -> "FloatType":
        try:
            return cls[name.upper()]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r} (choose from f32, f16, q40, q80)") from None

    @property
    def is_quantized(self) -> bool:
        return self in (FloatType.Q40, FloatType.Q80)

    @property
    def block_size(self) -> int:
        """Values per block: a quantized tensor's rows are whole blocks."""
        return 32 if self.is_quantized else 1

    def nbytes(self, n_elements: int) -> int:
        if n_elements % self.block_size:
            raise ValueError(f"{self.name} needs a multiple of 32 values, got {n_elements}")
        return {
            FloatType.F32: 4 * n_elements,
            FloatType.F16: 2 * n_elements,
            FloatType.Q40: n_elements // 32 * 18,
            FloatType.Q80: n_elements // 32 * 34,
        }[self]


class ArchType(IntEnum):
    """Architecture ids. The first three are distributed-llama's; the rest are ours."""

    LLAMA = 0xABCD00
    QWEN3 = 0xABCD01
    QWEN3_MOE = 0xABCD02
    GLM = 0xABCD10  # HF glm and the legacy chatglm layout
    GLM4 = 0xABCD11
    GLM4_MOE = 0xABCD12
    GLM4_MOE_LITE = 0xABCD13


class HiddenAct(IntEnum):
    GELU = 0
    SILU = 1


class RopeType(IntEnum):
    LLAMA = 0
    FALCON = 1
    LLAMA3_1 = 2
    YARN = 3  # ours


# Header keys. 0..21 are distributed-llama's (same ids, same meanings); 256 and up are ours and
# only appear in files that need them, so plain Llama/Qwen3 files stay readable by distributed-llama.
HEADER_KEYS = {
    "version": 0,
    "arch_type": 1,
    "dim": 2,
    "hidden_dim": 3,
    "n_layers": 4,
    "n_heads": 5,
    "n_kv_heads": 6,
    "n_experts": 7,
    "n_active_experts": 8,
    "vocab_size": 9,
    "max_seq_len": 10,
    "hidden_act": 11,
    "rope_theta": 12,
    "weights_float_type": 13,
    "rope_scaling_factor": 14,
    "rope_scaling_low_freq_factor": 15,
    "rope_scaling_high_freq_factory": 16,  # sic: distributed-llama's spelling
    "rope_scaling_orig_max_seq_len": 17,
    "rope_type": 18,
    "head_dim": 19,
    "norm_epsilon": 20,
    "moe_hidden_dim": 21,
    # Ours: exact float32 values where an int key would round (stored as float32 bits).
    "norm_epsilon_f32": 256,
    "rope_theta_f32": 257,
    "rope_scaling_factor_f32": 258,
    "rope_scaling_low_freq_factor_f32": 259,
    "rope_scaling_high_freq_factor_f32": 260,
    # Ours: rotary dims per head when only part of each head is rotated.
    "rope_dim": 261,
    # Ours: 1 when q/k/v projections carry biases.
    "attention_bias": 262,
    # Ours: mixture-of-experts routing beyond distributed-llama's softmax top-k.
    "n_shared_experts": 263,
    "n_dense_layers": 264,  # the first layers use a dense FFN of width hidden_dim
    "n_expert_groups": 265,
    "topk_groups": 266,
    "routed_scaling_factor_f32": 267,
    "norm_topk_prob": 268,  # absent: 1, as distributed-llama always renormalizes
    # Ours: 1 when q and k get a per-head RMSNorm (implied by QWEN3 and QWEN3_MOE).
    "qk_norm": 269,
    # Ours: multi-head latent attention.
    "q_lora_rank": 270,  # 0: plain q projection
    "kv_lora_rank": 271,
    "qk_nope_head_dim": 272,
    "qk_rope_head_dim": 273,
    "v_head_dim": 274,
    "attention_scale_f32": 275,  # the softmax scale, when not 1/sqrt(head_dim)
    "latent_norm_epsilon_f32": 276,
    # Ours: YaRN rope scaling (rope_type 3), with rope_scaling_factor(_f32) and _orig_max_seq_len.
    "yarn_beta_fast_f32": 277,
    "yarn_beta_slow_f32": 278,
    "yarn_attention_factor_f32": 279,  # multiplies cos and sin
    "yarn_truncate": 280,
    # Ours: multi-token-prediction layers stored after the last layer (GLM's nextn layer; 0 or 1).
    "n_mtp_layers": 281,
}
# Ours: per-tensor storage types. Key TENSOR_TYPE_KEYS + i holds the FloatType of tensor i (in file
# order), written only for a tensor stored in another type than its architecture's rule gives
# (architectures.default_tensor_type), e.g. F16 for a tensor whose rows are not whole 32-value blocks.
TENSOR_TYPE_KEYS = 1 << 16
KEY_NAMES = {v: k for k, v in HEADER_KEYS.items()}
FLOAT_BITS_KEYS = {k for k in HEADER_KEYS if k.endswith("_f32")}
NORM_EPSILON_CODES = {5: 1e-5, 6: 1e-6}


class ModelFileError(ValueError):
    """A .m file that cannot be read: names the file and what is wrong."""


def float_to_bits(x: float) -> int:
    return struct.unpack("<i", struct.pack("<f", x))[0]


def bits_to_float(b: int) -> float:
    return struct.unpack("<f", struct.pack("<i", b))[0]


def encode_header(params: dict[str, int | float], tensor_types: dict[int, FloatType] | None = None) -> bytes:
    """Header bytes for params (name -> value; float-bits keys take Python floats) and the storage
    types of the tensors that differ from their architecture's rule (tensor index -> type)."""
    body = b""
    for name, value in params.items():
        if name not in HEADER_KEYS:
            raise KeyError(f"unknown header key {name!r}")
        v = float_to_bits(value) if name in FLOAT_BITS_KEYS else int(value)
        body += struct.pack("<ii", HEADER_KEYS[name], v)
    for index, dtype in sorted((tensor_types or {}).items()):
        body += struct.pack("<ii", TENSOR_TYPE_KEYS + index, int(dtype))
    return struct.pack("<ii", MAGIC, 8 + len(body)) + body


@dataclass
class Header:
    params: dict[str, int | float]
    size: int  # bytes, where the tensors start
    tensor_types: dict[int, FloatType] = field(default_factory=dict)  # tensor index -> type, where not the rule's


def read_header(path: str | os.PathLike) -> Header:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise ModelFileError(f"{path}: not a .m model file (only {len(head)} bytes)")
            magic, size = struct.unpack("<ii", head)
            if magic in OLD_MAGICS:
                raise ModelFileError(f"{path}: old distributed-llama model format (magic {magic:#x}) is not supported")
            if magic != MAGIC:
                raise ModelFileError(f"{path}: not a .m model file (magic {magic & 0xFFFFFFFF:#010x}, expected {MAGIC:#010x})")
            if size < 8 or (size - 8) % 8 or size > 1 << 20:
                raise ModelFileError(f"{path}: corrupt header size {size}")
            body = f.read(size - 8)
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read: {e.strerror}") from None
    if len(body) < size - 8:
        raise ModelFileError(f"{path}: truncated header ({8 + len(body)} of {size} bytes)")
    params: dict[str, int | float] = {}
    tensor_types: dict[int, FloatType] = {}
    for key, value in struct.iter_unpack("<ii", body):
        if key >= TENSOR_TYPE_KEYS:
            try:
                tensor_types[key - TENSOR_TYPE_KEYS] = FloatType(value)
            except ValueError:
                raise ModelFileError(f"{path}: header key {key} (type of tensor {key - TENSOR_TYPE_KEYS}) has "
                                     f"unknown float type {value}") from None
            continue
        name = KEY_NAMES.get(key)
        if name is None:
            raise ModelFileError(f"{path}: unknown header key {key} (value {value}); written by a newer version?")
        params[name] = bits_to_float(value) if name in FLOAT_BITS_KEYS else value
    return Header(params, size, tensor_types)
