"""GGUF files (llama.cpp's format) as converter input.

A GGUF file holds everything a Hugging Face checkpoint directory does, under llama.cpp's names: the
config as metadata keys, the tensors (possibly quantized, stacked per expert, Q/K rows permuted) and
the tokenizer as token/merge lists. `GGUFCheckpoint` presents it the way the converter reads an HF
checkpoint: an HF-style config dict, tensors under HF names in HF layout (as float32, or as raw
Q40/Q80 blocks where GGUF's Q4_0/Q8_0 blocks are byte-for-byte ours), and a tokenizer bundle.

The `gguf` package (llama.cpp's own Python reader) parses the file, maps names and dequantizes every
block type; what is written here is only the mapping to our side.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from .hf_config import UnsupportedModelError
from .model_file import FloatType
from .safetensors_reader import CheckpointError
from .tensor_lists import RowPermutation, permute_for_interleaved_rope

GGUF_MAGIC = b"GGUF"

# llama.cpp architecture -> HF model_type. llama.cpp converts GLM-4.7-Flash (glm4_moe_lite) as deepseek2.
MODEL_TYPES = {"llama": "llama", "qwen3": "qwen3", "qwen3moe": "qwen3_moe", "glm4": "glm4", "glm4moe": "glm4_moe",
               "deepseek2": "glm4_moe_lite"}


def is_gguf(path: str | Path) -> bool:
    path = Path(path)
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def _import_gguf():
    try:
        import gguf
    except ImportError:
        raise UnsupportedModelError("reading GGUF files needs the `gguf` package: pip install gguf") from None
    return gguf


class GGUFCheckpoint:
    """A GGUF file read as an HF checkpoint: `config`, tensors by HF name, `tokenizer_bundle()`."""

    def __init__(self, path: str | Path):
        gguf = _import_gguf()
        self.path = self.directory = Path(path)  # `directory`: what error messages name, as for Checkpoint
        try:
            self._reader = gguf.GGUFReader(self.path)
        except (ValueError, OSError, IndexError, KeyError) as e:
            raise CheckpointError(f"{self.path}: not a readable GGUF file ({e})") from None
        self._gguf = gguf
        self.meta = {name: field.contents() for name, field in self._reader.fields.items()
                     if not name.startswith("tokenizer.ggml.")}
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.arch = self.meta.get("general.architecture")
        if self.arch not in MODEL_TYPES:
            raise UnsupportedModelError(f"{self.path}: GGUF architecture {self.arch!r} is not supported; "
                                        f"supported: {', '.join(sorted(MODEL_TYPES))}")
        self._names = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, _arch_enum_name(gguf, self.arch)),
                                               self._key("block_count"))
        self._qk_order = {}
        self.config = self._hf_config()
        self._qk_order = self._llama_qk_order() if self.arch == "llama" else {}

    # ----------------------------------------------------------------------------------------- metadata

    def _key(self, name: str, default=KeyError):
        value = self.meta.get(f"{self.arch}.{name}", default)
        if value is KeyError:
            raise CheckpointError(f"{self.path}: GGUF metadata has no {self.arch}.{name}")
        return value

    def _has(self, gguf_name: str) -> bool:
        return gguf_name in self._tensors

    def _hf_config(self) -> dict:
        """The config.json this file was converted from, as far as our architectures need it."""
        key = self._key
        n_heads = key("attention.head_count")
        kv_heads = key("attention.head_count_kv", n_heads)
        if isinstance(kv_heads, list) or isinstance(n_heads, list):
            raise UnsupportedModelError(f"{self.path}: per-layer head counts are not supported")
        dim = key("embedding_length")
        n_layers = key("block_count") - key("nextn_predict_layers", 0)  # llama.cpp counts MTP layers as blocks
        if "token_embd.weight" not in self._tensors:
            raise CheckpointError(f"{self.path}: no token_embd.weight tensor")
        config = {
            "model_type": MODEL_TYPES[self.arch],
            "hidden_size": dim,
            "intermediate_size": key("feed_forward_length", 0),
            "num_hidden_layers": n_layers,
            "num_attention_heads": n_heads,
            "num_key_value_heads": kv_heads,
            "max_position_embeddings": key("context_length", 4096),
            "rms_norm_eps": key("attention.layer_norm_rms_epsilon", 1e-5),
            "rope_theta": key("rope.freq_base", 10000.0),
            "vocab_size": self.shape("model.embed_tokens.weight")[0],
            "tie_word_embeddings": "output.weight" not in self._tensors,
            "hidden_act": "silu",
        }
        if self.arch == "deepseek2":
            return self._mla_config(config)
        head_dim = key("attention.key_length", dim // n_heads)
        rope_dim = key("rope.dimension_count", head_dim)
        config["head_dim"] = head_dim
        if self.arch == "llama":
            if rope_dim != head_dim:
                raise UnsupportedModelError(f"{self.path}: llama with partial RoPE ({rope_dim} of {head_dim}) is not supported")
            if "rope_freqs.weight" in self._tensors:
                config["rope_scaling"] = self._llama3_rope(head_dim, config["rope_theta"])
        if self.arch in ("glm4", "glm4moe"):
            config["partial_rotary_factor"] = rope_dim / head_dim
            config["attention_bias"] = self._has("blk.0.attn_q.bias")
        if self.arch in ("qwen3moe", "glm4moe"):
            config.update(self._moe_config())
        if self.arch == "glm4moe":
            config["use_qk_norm"] = self._has("blk.0.attn_q_norm.weight")
        self._check_rope_scaling(("yarn",) if self.arch == "deepseek2" else ())
        return config

    def _moe_config(self) -> dict:
        key = self._key
        cfg = {"num_experts_per_tok": key("expert_used_count"), "moe_intermediate_size": key("expert_feed_forward_length"),
               "norm_topk_prob": bool(key("expert_weights_norm", True))}
        if self.arch == "qwen3moe":
            return cfg | {"num_experts": key("expert_count")}
        gating = key("expert_gating_func", 2)
        if gating != 2:  # llama.cpp's ExpertGatingFuncType: 1 softmax, 2 sigmoid
            raise UnsupportedModelError(f"{self.path}: expert_gating_func {gating} (only sigmoid routing is supported)")
        dense = key("leading_dense_block_count", 0)
        if not self._has(f"blk.{dense}.exp_probs_b.bias"):
            raise UnsupportedModelError(f"{self.path}: the MoE router has no selection bias (blk.{dense}.exp_probs_b.bias); "
                                        "only GLM-style routing is supported")
        return cfg | {"n_routed_experts": key("expert_count"), "n_shared_experts": key("expert_shared_count", 0),
                      "first_k_dense_replace": dense, "routed_scaling_factor": key("expert_weights_scale", 1.0),
                      "n_group": key("expert_group_count", 1), "topk_group": key("expert_group_used_count", 1)}

    def _mla_config(self, config: dict) -> dict:
        key = self._key
        rope = key("rope.dimension_count")
        # Newer llama.cpp writes MLA's per-head sizes as *_mla and key/value_length as the latent sizes.
        qk_head = key("attention.key_length_mla", None) or key("attention.key_length")
        v_head = key("attention.value_length_mla", None) or key("attention.value_length")
        config.update(self._moe_config(), model_type="glm4_moe_lite", num_key_value_heads=config["num_attention_heads"],
                      q_lora_rank=key("attention.q_lora_rank", None), kv_lora_rank=key("attention.kv_lora_rank"),
                      qk_rope_head_dim=rope, qk_nope_head_dim=qk_head - rope, v_head_dim=v_head,
                      attention_bias=self._has("blk.0.attn_kv_a_mqa.bias"))
        n_dense = config.pop("first_k_dense_replace")
        config["mlp_layer_types"] = ["dense"] * n_dense + ["sparse"] * (config["num_hidden_layers"] - n_dense)
        scaling = key("rope.scaling.type", "none")
        if scaling == "yarn":
            # llama.cpp stores DeepSeek's mscale_all_dim as yarn_log_multiplier = 0.1 * mscale_all_dim.
            mscale_all_dim = key("rope.scaling.yarn_log_multiplier", 0.0) / 0.1
            config["rope_scaling"] = {"rope_type": "yarn", "factor": key("rope.scaling.factor"),
                                      "original_max_position_embeddings": key("rope.scaling.original_context_length"),
                                      "beta_fast": key("rope.scaling.yarn_beta_fast", 32.0),
                                      "beta_slow": key("rope.scaling.yarn_beta_slow", 1.0),
                                      "mscale": mscale_all_dim, "mscale_all_dim": mscale_all_dim}
        return config

    def _check_rope_scaling(self, allowed: tuple[str, ...]):
        scaling = self._key("rope.scaling.type", "none")
        if scaling not in ("none",) + allowed:
            raise UnsupportedModelError(f"{self.path}: rope scaling {scaling!r} is not supported for {self.arch}")

    def _llama3_rope(self, head_dim: int, theta: float) -> dict | None:
        """llama.cpp stores Llama 3.1 RoPE scaling as a table of per-frequency wavelength divisors
        (rope_freqs) instead of its parameters. The formula only depends on the wavelength thresholds
        context/high_freq_factor and context/low_freq_factor, so the context is taken as 8192 (every
        Llama 3.x) and the factors are recovered from the table: from the line the in-between entries
        lie on (1/f = (1 - s)/factor + s, s linear in 1/wavelength), or, with fewer such entries, from the
        gap between the unscaled and fully scaled ones. The result is checked by recomputing the table."""
        factors = self._tensors["rope_freqs.weight"].data.astype(np.float64).reshape(-1)
        wavelen = 2 * math.pi * theta ** (np.arange(0, head_dim, 2) / head_dim)
        factor, context = float(factors.max()), 8192
        if len(factors) != len(wavelen):
            raise UnsupportedModelError(f"{self.path}: rope_freqs.weight has {len(factors)} values, expected {len(wavelen)}")
        if factor <= 1 + 1e-6:
            return None
        unscaled, scaled = factors <= 1 + 1e-6, factors >= factor * (1 - 1e-6)
        between = ~unscaled & ~scaled
        s = (1 / factors - 1 / factor) / (1 - 1 / factor)  # the smoothing weight of each in-between entry
        below = wavelen[unscaled].max() if unscaled.any() else 0.0
        if between.sum() >= 2:
            slope, intercept = np.polyfit(1 / wavelen[between], s[between], 1)
            low = -intercept * context / slope
            high = low + context / slope
        elif between.sum() == 1:
            k = np.flatnonzero(between)[0]
            high = context / ((below + wavelen[k]) / 2)
            low = (context / wavelen[k] - s[k] * high) / (1 - s[k])
        else:
            above = wavelen[scaled].min()
            high, low = context / (below + (above - below) / 3), context / (below + 2 * (above - below) / 3)
        low, high = (float(round(v)) if abs(v - round(v)) < 1e-3 else float(v) for v in (low, high))
        smooth = (context / wavelen - low) / (high - low)
        expected = np.where(wavelen < context / high, 1.0,
                            np.where(wavelen > context / low, factor, 1 / ((1 - smooth) / factor + smooth)))
        if not np.allclose(expected, factors, rtol=1e-4):
            raise UnsupportedModelError(f"{self.path}: rope_freqs.weight is not a Llama 3 RoPE scaling table")
        return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
                "original_max_position_embeddings": context, "rope_theta": theta}

    # ------------------------------------------------------------------------------------------ tensors

    def _llama_qk_order(self) -> dict[str, RowPermutation]:
        """llama.cpp stores Llama q/k rows interleaved for its pairwise RoPE; these undo that."""
        cfg = self.config
        return {"self_attn.q_proj.weight": permute_for_interleaved_rope(cfg["num_attention_heads"], cfg["head_dim"]).inverse(),
                "self_attn.k_proj.weight": permute_for_interleaved_rope(cfg["num_key_value_heads"], cfg["head_dim"]).inverse()}

    def _locate(self, name: str):
        """(GGUF tensor, expert index or None) holding HF tensor `name`, or None."""
        m = re.fullmatch(r"(model\.layers\.\d+\.mlp\.experts)\.(\d+)\.(\w+)\.weight", name)
        if m:  # llama.cpp stacks the experts of a layer into one [n_experts, rows, cols] tensor
            stacked = self._names.get_name(f"{m[1]}.{m[3]}", try_suffixes=(".weight",))
            t = self._tensors.get(f"{stacked}.weight")
            return (t, int(m[2])) if t is not None and int(m[2]) < t.data.shape[0] else None
        # e_score_correction_bias is a tensor's own name in HF, a ".bias" suffix in llama.cpp's table.
        lookup = name.replace("e_score_correction_bias", "e_score_correction.bias")
        gguf_name = self._names.get_name(lookup, try_suffixes=(".weight", ".bias"))
        t = self._tensors.get(gguf_name) if gguf_name else None
        return (t, None) if t is not None else None

    def _latent_kv_b(self, name: str):
        """Newer GGUFs split MLA's kv_b_proj into attn_k_b (each head's key block, transposed) and attn_v_b."""
        m = re.fullmatch(r"model\.layers\.(\d+)\.self_attn\.kv_b_proj\.weight", name)
        if not m:
            return None
        k_b, v_b = self._tensors.get(f"blk.{m[1]}.attn_k_b.weight"), self._tensors.get(f"blk.{m[1]}.attn_v_b.weight")
        return (k_b, v_b) if k_b is not None and v_b is not None else None

    def __contains__(self, name: str) -> bool:
        return self._locate(name) is not None or self._latent_kv_b(name) is not None

    def gguf_names(self, hf_names) -> set[str]:
        """The GGUF tensors that the given HF tensors come from."""
        used = set()
        for name in hf_names:
            if (loc := self._locate(name)) is not None:
                used.add(loc[0].name)
            elif (pair := self._latent_kv_b(name)) is not None:
                used.update(t.name for t in pair)
        return used

    def n_values(self) -> int:
        """Values in all tensors together."""
        return sum(int(t.n_elements) for t in self._tensors.values())

    def unused(self, hf_names) -> list[str]:
        used = self.gguf_names(hf_names)
        return sorted(n for n in self._tensors if n not in used and n != "rope_freqs.weight")

    @staticmethod
    def _torch_shape(t) -> tuple[int, ...]:
        return tuple(int(n) for n in reversed(t.shape))  # GGUF lists dimensions innermost first

    def shape(self, name: str) -> tuple[int, ...]:
        if (pair := self._latent_kv_b(name)) is not None:
            k_b, v_b = (self._torch_shape(t) for t in pair)  # [heads, kv_lora, nope], [heads, v, kv_lora]
            return (k_b[0] * (k_b[2] + v_b[1]), k_b[1])
        loc = self._locate(name)
        if loc is None:
            raise CheckpointError(f"{self.path}: missing tensor {name!r}")
        shape = self._torch_shape(loc[0])
        return shape[1:] if loc[1] is not None else shape

    def _rows(self, name: str):
        """The tensor's storage as a 2-D array of rows ([rows, bytes or values per row]) and its GGUF type."""
        t, expert = self._locate(name)
        data = t.data
        row_len = data.shape[-1]
        rows = data.reshape(-1, row_len)
        if expert is not None:
            per_expert = rows.shape[0] // data.shape[0]
            rows = rows[expert * per_expert:(expert + 1) * per_expert]
        return rows, t.tensor_type

    def _dequantize(self, rows: np.ndarray, qtype) -> np.ndarray:
        try:
            return self._gguf.quants.dequantize(rows, qtype).astype(np.float32, copy=False)
        except NotImplementedError:
            raise UnsupportedModelError(f"{self.path}: GGUF tensor type {qtype.name} cannot be read") from None

    def read(self, name: str, row_begin: int = 0, row_end: int | None = None) -> np.ndarray:
        """Rows [row_begin, row_end) of HF tensor `name` as float32, in HF layout."""
        if (pair := self._latent_kv_b(name)) is not None:
            k_b, v_b = (self._dequantize(t.data.reshape(-1, t.data.shape[-1]), t.tensor_type).reshape(self._torch_shape(t))
                        for t in pair)
            kv_b = np.concatenate([k_b.transpose(0, 2, 1), v_b], axis=1)  # per head: nope key rows, then v rows
            kv_b = kv_b.reshape(-1, kv_b.shape[-1])
            return kv_b[row_begin:row_end]
        rows, qtype = self._rows(name)
        order = self._row_order(name)
        if order is not None:
            values = order(self._dequantize(rows, qtype))[row_begin:row_end]
        else:
            values = self._dequantize(rows[row_begin:row_end], qtype)
        shape = self.shape(name)
        return values.reshape((-1, *shape[1:]) if len(shape) > 1 else (-1,))

    def _row_order(self, name: str) -> RowPermutation | None:
        suffix = name.split(".", 3)[-1] if name.startswith("model.layers.") else None
        return self._qk_order.get(suffix)

    def stored_type(self, name: str) -> FloatType | None:
        """Our float type whose bytes equal this tensor's GGUF storage, if any (Q4_0 and Q8_0 blocks are
        laid out exactly as Q40 and Q80: f16 scale, then 16 nibble pairs / 32 int8)."""
        if (loc := self._locate(name)) is None:
            return None
        Q = self._gguf.GGMLQuantizationType
        return {Q.F32: FloatType.F32, Q.F16: FloatType.F16, Q.Q4_0: FloatType.Q40, Q.Q8_0: FloatType.Q80}.get(loc[0].tensor_type)

    def read_stored(self, name: str, row_begin: int = 0, row_end: int | None = None) -> np.ndarray:
        """Rows of the tensor in its stored encoding (see stored_type), in HF row order: [rows, bytes per row]."""
        rows, _ = self._rows(name)
        order = self._row_order(name)
        rows = order(rows)[row_begin:row_end] if order is not None else rows[row_begin:row_end]
        return np.ascontiguousarray(rows).view(np.uint8).reshape(rows.shape[0], -1)

    # ---------------------------------------------------------------------------------------- tokenizer

    def tokenizer_bundle(self) -> dict | None:
        from .gguf_tokenizer import bundle_from_gguf_fields

        return bundle_from_gguf_fields(self._reader.fields, self.path)

    def close(self):
        self._reader = None
        self._tensors = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _arch_enum_name(gguf, arch: str) -> str:
    return next(member for member, name in gguf.MODEL_ARCH_NAMES.items() if name == arch).name
