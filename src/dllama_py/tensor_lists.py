"""The tensors of each architecture's .m file, in order, and where each comes from in an HF
checkpoint (names, row ranges of fused weights, transforms)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .model_file import FloatType

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


@dataclass(frozen=True)
class Source:
    """Where a tensor comes from in the HF checkpoint: a tensor, or a range of its rows (fused
    weights such as GLM's gate_up_proj or ChatGLM's query_key_value are split this way)."""

    name: str
    rows: tuple[int, int] | None = None


class RowPermutation:
    """A transform that only reorders rows (new row i = old row `order[i]`). Unlike other transforms it
    also applies to rows of quantized blocks, so already-quantized input can be copied without
    re-quantizing."""

    def __init__(self, order: np.ndarray):
        self.order = np.asarray(order)

    def __call__(self, w: np.ndarray) -> np.ndarray:
        if w.shape[0] != len(self.order):
            raise ValueError(f"row permutation of {len(self.order)} rows applied to {w.shape[0]} rows")
        return w[self.order]

    def inverse(self) -> "RowPermutation":
        return RowPermutation(np.argsort(self.order))


def permute_for_interleaved_rope(n_heads: int, head_dim: int) -> RowPermutation:
    """HF stores Llama q/k for rotate-half RoPE; distributed-llama's LLAMA graph rotates adjacent
    pairs, so rows are reordered within each head: new row 2j = old j, new row 2j+1 = old j + d/2.
    (llama.cpp's GGUF files store q/k in this same interleaved order.)"""
    order = np.arange(n_heads * head_dim).reshape(n_heads, 2, head_dim // 2).swapaxes(1, 2).reshape(-1)
    return RowPermutation(order)


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


def rope_dim_of(p: dict) -> int:
    """Rotated dims per head: rope_dim, else MLA's qk_rope_head_dim, else the whole head."""
    return p.get("rope_dim") or p.get("qk_rope_head_dim") or head_dim_of(p)


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
    # the multi-token-prediction layer's own tensors (GLM / DeepSeek-V3 checkpoints)
    "mtp.enorm": "enorm.weight", "mtp.hnorm": "hnorm.weight", "mtp.eh_proj": "eh_proj.weight",
    "mtp.head_norm": "shared_head.norm.weight",
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


MTP_ROLES = ["mtp.enorm", "mtp.hnorm", "mtp.eh_proj", "mtp.head_norm"]


def role_shape(p: dict, role: str) -> tuple[int, int, FloatType | None]:
    """(rows, cols, stored type or None for the weight type) of a layer tensor."""
    dim, head_dim = p["dim"], head_dim_of(p)
    q_dim, kv_dim = p["n_heads"] * head_dim, p["n_kv_heads"] * head_dim
    f32 = FloatType.F32
    if role.startswith("mtp."):
        return (dim, 2 * dim, None) if role == "mtp.eh_proj" else (1, dim, f32)
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
    """Every tensor of a decoder model in file order: embedding, each layer's, final norm, output head,
    then the multi-token-prediction layer when the header has one (a decoder layer numbered after the
    last, then its input norms, input projection and head norm), so a file without it is a prefix."""
    dim, vocab = p["dim"], p["vocab_size"]
    transforms, source_shapes = {}, {}
    if permute_qk:
        transforms = {"attn.q": permute_for_interleaved_rope(p["n_heads"], head_dim_of(p)),
                      "attn.k": permute_for_interleaved_rope(p["n_kv_heads"], head_dim_of(p))}
    if is_latent_attention(p):
        transforms = {"attn.k_b": split_kv_b(p, "k"), "attn.v_b": split_kv_b(p, "v")}
        kv_b_shape = (p["n_heads"] * (p["qk_nope_head_dim"] + p["v_head_dim"]), p["kv_lora_rank"])
        source_shapes = {"attn.k_b": kv_b_shape, "attn.v_b": kv_b_shape}

    def spec(name: str, rows: int, cols: int, dtype, src: Source, transform=None, fallback=None,
             source_shape=None) -> TensorSpec:
        return TensorSpec(name, rows, cols, dtype, src.name, transform, fallback, src.rows, source_shape)

    def layer(l: int, roles: list[str]) -> list[TensorSpec]:
        out = []
        for role in roles:
            rows, cols, dtype = role_shape(p, role)
            out.append(spec(f"layers.{l}.{role}", rows, cols, dtype, names(p, l, role), transforms.get(role),
                            source_shape=source_shapes.get(role)))
        return out

    roles = lambda l: layer_roles(p, l, qk_norm=qk_norm, bias=bias, sandwich=sandwich, router_bias=router_bias)  # noqa: E731
    specs = [spec("embedding", vocab, dim, embedding_dtype, names(p, None, "embedding"))]
    for l in range(p["n_layers"]):
        specs += layer(l, roles(l))
    specs.append(spec("final_norm", 1, dim, FloatType.F32, names(p, None, "final_norm")))
    specs.append(spec("lm_head", vocab, dim, None, names(p, None, "lm_head"),
                      fallback=names(p, None, "embedding").name))
    for l in range(p["n_layers"], p["n_layers"] + p.get("n_mtp_layers", 0)):
        specs += layer(l, roles(l) + MTP_ROLES)
    return specs
