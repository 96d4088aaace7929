"""What each node of a split model holds in memory, without loading it: its slices of the weights, the
file bytes it keeps mapped, and its share of the KV cache.

The split rules are the C++ blocks' (cpp/blocks/*.cpp: attention by query heads with the KV heads they
use, latent attention by heads, feed-forwards by rows of their hidden layer, the output head by
vocabulary rows), with the C++ rule itself: heads and hidden rows by _core.unit_share (whole groups that
never cut a quantized output projection's blocks), the vocabulary by _core.node_share (cpp/partition.h),
both weighted by --split when one is given.
tests/test_node_memory.py holds these figures to what the C++ graph really reads and allocates when it
builds each node's share (_core.measure_node_share), for every architecture and 1-4 nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import _core
from .architectures import ModelLayout


@dataclass
class NodeMemory:
    weights: int  # bytes of weight slices copied into memory
    mapped: int  # bytes of the model file read in place (node 0's embedding table), on demand
    kv_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.mapped + self.kv_cache


def node_memory(layout: ModelLayout, node: int, n_nodes: int, seq_len: int, kv_f16: bool,
                mtp: bool = False, split: Sequence[float] = ()) -> NodeMemory:
    """The memory node `node` of `n_nodes` takes for this model at a context of seq_len positions (with
    its multi-token-prediction layer, when mtp), the nodes' shares weighted by `split` (one weight per
    node, root first; empty: equal); raises ValueError when the model cannot be split that way."""
    split = list(split)
    p = layout.params
    n_layers = p["n_layers"] + (p.get("n_mtp_layers", 0) if mtp else 0)
    n_heads, n_kv_heads = p["n_heads"], p["n_kv_heads"]
    head_dim = p.get("head_dim") or p["dim"] // n_heads
    latent = p.get("kv_lora_rank", 0) > 0
    dtype_of = {t.spec.name: t.dtype for t in layout.tensors}
    cols_of = {t.spec.name: t.spec.cols for t in layout.tensors}

    def unit_share(tensor: str, unit: str, units: int) -> tuple[int, int]:
        """Raises ValueError naming the constraint when some node would get none."""
        return _core.unit_share(tensor, unit, units, cols_of[tensor] // units, _core.FloatType(int(dtype_of[tensor])),
                                node, n_nodes, split)

    h0, h1 = unit_share("layers.0.attn.o", "heads", n_heads)  # every layer's o has the same shape and type
    group = n_heads // n_kv_heads
    kv_first, kv_end = h0 // group, (h1 - 1) // group + 1
    q_rows, kv_rows = (h1 - h0) * head_dim, (kv_end - kv_first) * head_dim
    if latent:
        q_rows = (h1 - h0) * (p["qk_nope_head_dim"] + p["qk_rope_head_dim"])

    def hidden_rows(prefix: str, width: int) -> int:
        begin, end = unit_share(prefix + "down", "hidden rows", width)
        return end - begin

    def sliced(name: str, rows: int, cols: int) -> tuple[int, int]:
        """(rows, cols) of the tensor that this node holds."""
        role = name.split(".", 2)[2] if name.startswith("layers.") else name
        if role == "embedding" or name.startswith("layers.") and int(name.split(".")[1]) >= n_layers:
            return 0, 0
        if role in ("mtp.enorm", "mtp.hnorm", "mtp.eh_proj"):  # the MTP layer's input, made by node 0
            return (rows, cols) if node == 0 else (0, 0)
        if role == "lm_head":
            begin, end = _core.node_share(rows, node, n_nodes, split)
            return end - begin, cols
        if role.startswith(("ffn.", "moe.experts.", "moe.shared.")):
            prefix = name[: name.rindex(".") + 1]
            width = cols if role.endswith("down") else rows
            part = hidden_rows(prefix, width)
            return (rows, part) if role.endswith("down") else (part, cols)
        if latent:
            heads = h1 - h0
            per_head_rows = {"attn.q": q_rows, "attn.q_b": q_rows, "attn.k_b": heads * p["kv_lora_rank"],
                             "attn.v_b": heads * p["v_head_dim"]}
            if role in per_head_rows:
                return per_head_rows[role], cols
            if role == "attn.o":
                return rows, (h1 - h0) * p["v_head_dim"]
            if role == "attn.o_bias":
                return (rows, cols) if node == 0 else (0, 0)  # added once, by node 0
            return rows, cols
        if role in ("attn.q", "attn.k", "attn.v"):
            return q_rows if role == "attn.q" else kv_rows, cols
        if role in ("attn.q_bias", "attn.k_bias", "attn.v_bias"):
            return rows, q_rows if role == "attn.q_bias" else kv_rows
        if role == "attn.o":
            return rows, (h1 - h0) * head_dim
        return rows, cols  # norms, routers: whole on every node

    weights = 0
    for t in layout.tensors:
        rows, cols = sliced(t.spec.name, t.spec.rows, t.spec.cols)
        weights += t.dtype.nbytes(rows * cols)
    mapped = next(t.nbytes for t in layout.tensors if t.spec.name == "embedding") if node == 0 else 0
    if latent:
        kv_values = p["kv_lora_rank"] + p["qk_rope_head_dim"]  # not split: every node keeps the whole latent
    else:
        kv_values = 2 * (kv_end - kv_first) * head_dim
    kv_cache = n_layers * kv_values * seq_len * (2 if kv_f16 else 4)
    return NodeMemory(weights, mapped, kv_cache)
