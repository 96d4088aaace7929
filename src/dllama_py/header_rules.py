"""The rules a .m header must satisfy, checked as a whole before a tensor list is built or anything is
allocated. The loader applies them to every file it opens and the converter to every header it is about
to write, so the converter never writes a file the loader refuses, and the C++ core, which is configured
from a checked header, never sees sizes it cannot run (a zero or negative size, KV heads that do not
divide the heads, more rotary dims than a head has, an expert count the file cannot hold...).
"""

from __future__ import annotations

import math

from .model_file import FLOAT_BITS_KEYS, NORM_EPSILON_CODES, FloatType, HiddenAct, ModelFileError, RopeType
from .tensor_lists import head_dim_of, rope_dim_of

# Every architecture needs these.
BASE_KEYS = ("arch_type", "dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "weights_float_type")

# Keys only some architectures read (their table entry lists them in required_keys or optional_keys),
# with the value that means "not used": a file of another architecture may carry them only at that value
# (distributed-llama writes n_experts = 0 in dense files), since the C++ graph and the tensor list of an
# architecture that ignores a key could not agree on what it means.
ARCH_KEY_UNUSED = {
    "attention_bias": 0, "qk_norm": 0, "n_experts": 0, "n_active_experts": 0, "moe_hidden_dim": 0,
    "n_shared_experts": 0, "n_dense_layers": 0, "n_expert_groups": 1, "topk_groups": 1,
    "routed_scaling_factor_f32": 1.0, "norm_topk_prob": 1, "q_lora_rank": 0, "kv_lora_rank": 0,
    "qk_nope_head_dim": 0, "qk_rope_head_dim": 0, "v_head_dim": 0, "attention_scale_f32": 0.0,
    "latent_norm_epsilon_f32": None,  # None: must be absent
}
FLAG_KEYS = ("attention_bias", "qk_norm", "norm_topk_prob", "yarn_truncate")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


class _Header:
    """The params being checked, and the error naming the file and the key."""

    def __init__(self, params: dict, where: str):
        self.p, self.where = params, where

    def fail(self, key: str, why: str, value=None):
        value = self.p.get(key) if value is None else value
        raise ModelFileError(f"{self.where}: header key {key} = {_show(value)} {why}")

    def at_least(self, key: str, minimum: int, default: int | None = None) -> int:
        """The value (default when absent), which must be >= minimum."""
        value = self.p.get(key, default)
        if value is None:
            raise ModelFileError(f"{self.where}: header has no {key!r}")
        if value < minimum:
            self.fail(key, f"must be at least {minimum}")
        return value

    def positive_float(self, key: str, default: float | None = None) -> float | None:
        value = self.p.get(key, default)
        if value is not None and not (math.isfinite(value) and value > 0):
            self.fail(key, "must be a finite number above 0")
        return value


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def check_header(params: dict, arch, where: str, tensor_bytes: int | None = None,
                 tensor_bytes_are: str = "bytes after the header") -> None:
    """Raises ModelFileError (naming `where` and the key) unless params is a header `arch` can run.
    tensor_bytes: the most bytes the tensors can have (a file's bytes after its header): counts that need
    more are refused before a tensor list with one entry per tensor is built."""
    h = _Header(params, where)
    p = params
    for key, value in p.items():  # file headers hold int32 values; a converter's plan may not
        if key not in FLOAT_BITS_KEYS and not (isinstance(value, int) and INT32_MIN <= value <= INT32_MAX):
            h.fail(key, "is not an int32")
    for key in BASE_KEYS + arch.required_keys:
        if key not in p:
            raise ModelFileError(f"{where}: header has no {key!r} (the {arch.builder} architecture needs it)")
    for key, unused in ARCH_KEY_UNUSED.items():
        if key in p and key not in arch.required_keys + arch.optional_keys and p[key] != unused:
            h.fail(key, f"is not used by the {arch.builder} architecture"
                        + ("" if unused is None else f" (only {unused} is allowed)"))
    if p["weights_float_type"] not in FloatType.__members__.values():
        h.fail("weights_float_type", f"is not a known weight type ({', '.join(f'{t.value} {t.name}' for t in FloatType)})")
    if p.get("version", 0) != 0:
        h.fail("version", "is not supported (only 0)")
    if p.get("hidden_act", HiddenAct.SILU) != HiddenAct.SILU:
        h.fail("hidden_act", f"is not supported (only {int(HiddenAct.SILU)}, SILU)")
    for key in FLAG_KEYS:
        if p.get(key, 0) not in (0, 1):
            h.fail(key, "must be 0 or 1")

    dim, n_layers = h.at_least("dim", 1), h.at_least("n_layers", 1)
    h.at_least("hidden_dim", 1)
    h.at_least("vocab_size", 1)
    h.at_least("max_seq_len", 1, default=1)
    n_heads, n_kv_heads = h.at_least("n_heads", 1), h.at_least("n_kv_heads", 1)
    if n_heads % n_kv_heads:
        h.fail("n_kv_heads", f"does not divide n_heads = {n_heads}")
    if h.at_least("head_dim", 0, default=0) == 0 and dim % n_heads:  # 0: dim / n_heads, as in distributed-llama
        h.fail("dim", f"is not a multiple of n_heads = {n_heads} (and there is no head_dim)")
    head_dim = head_dim_of(p)
    _check_rope(h, head_dim, arch)

    if p.get("n_mtp_layers", 0) not in (0, 1):
        h.fail("n_mtp_layers", "must be 0 or 1 (a file holds at most one multi-token-prediction layer)")
    if "norm_epsilon" in p and p["norm_epsilon"] not in NORM_EPSILON_CODES:
        h.fail("norm_epsilon", f"is not a known code ({', '.join(map(str, NORM_EPSILON_CODES))})")
    h.positive_float("norm_epsilon_f32")
    h.positive_float("latent_norm_epsilon_f32")
    if p.get("attention_scale_f32", 0.0) != 0.0:
        h.positive_float("attention_scale_f32")

    moe = "n_experts" in arch.required_keys
    n_dense = n_layers
    if moe:
        n_experts = h.at_least("n_experts", 1)
        if not 1 <= p["n_active_experts"] <= n_experts:
            h.fail("n_active_experts", f"must be between 1 and n_experts = {n_experts}")
        h.at_least("moe_hidden_dim", 1)
        h.at_least("n_shared_experts", 0, default=0)
        n_dense = h.at_least("n_dense_layers", 0, default=0)
        if n_dense > n_layers:
            h.fail("n_dense_layers", f"is more than n_layers = {n_layers}")
        groups = h.at_least("n_expert_groups", 1, default=1)
        if n_experts % groups or (groups > 1 and n_experts // groups < 2):
            h.fail("n_expert_groups", f"must divide n_experts = {n_experts} into groups of 2 or more")
        top_groups = h.at_least("topk_groups", 1, default=1)
        if top_groups > groups:
            h.fail("topk_groups", f"is more than n_expert_groups = {groups}")
        if p["n_active_experts"] > n_experts // groups * top_groups:
            h.fail("n_active_experts", f"is more than the {n_experts // groups * top_groups} experts "
                                       f"of the top {top_groups} groups")
        h.positive_float("routed_scaling_factor_f32")

    latent = "kv_lora_rank" in arch.required_keys
    if latent:
        for key in ("kv_lora_rank", "qk_nope_head_dim", "v_head_dim"):
            h.at_least(key, 1)
        h.at_least("q_lora_rank", 0, default=0)

    if tensor_bytes is not None:
        _check_fits(h, tensor_bytes, tensor_bytes_are, head_dim, n_dense, moe, latent)


def _check_rope(h: _Header, head_dim: int, arch) -> None:
    p = h.p
    if "kv_lora_rank" in arch.required_keys:
        qk_rope = h.at_least("qk_rope_head_dim", 2)
        if p.get("rope_dim", qk_rope) != qk_rope:
            h.fail("rope_dim", f"differs from qk_rope_head_dim = {qk_rope}")
    h.at_least("rope_dim", 2, default=2)
    rope_dim = rope_dim_of(p)
    key = next(k for k in ("rope_dim", "qk_rope_head_dim", "head_dim", "dim") if p.get(k))
    if rope_dim % 2:
        h.fail(key, "gives an odd number of rotary dims (RoPE rotates pairs)")
    if rope_dim > head_dim:
        h.fail(key, f"is more than head_dim = {head_dim}")
    if p.get("rope_theta", 1) < 1:
        h.fail("rope_theta", "must be at least 1")
    theta = h.positive_float("rope_theta_f32") or p.get("rope_theta", 10000)
    rope_type = p.get("rope_type")
    if rope_type is not None and rope_type not in RopeType.__members__.values():
        h.fail("rope_type", f"is not a known rope type ({', '.join(f'{t.value} {t.name}' for t in RopeType)})")
    factor_key = "rope_scaling_factor_f32" if "rope_scaling_factor_f32" in p else "rope_scaling_factor"
    factor = h.positive_float(factor_key, 1.0) if factor_key.endswith("_f32") else h.at_least(factor_key, 1, default=1)
    orig = h.at_least("rope_scaling_orig_max_seq_len", 0, default=0)
    if rope_type == RopeType.YARN:
        if orig < 1:
            h.fail("rope_scaling_orig_max_seq_len", "must be at least 1 for YaRN")
        if theta <= 1:
            h.fail("rope_theta_f32" if "rope_theta_f32" in p else "rope_theta", "must be above 1 for YaRN")
        for key in ("yarn_beta_fast_f32", "yarn_beta_slow_f32", "yarn_attention_factor_f32"):
            h.positive_float(key)
    elif factor != 1 and rope_type in (None, RopeType.LLAMA, RopeType.LLAMA3_1):  # Llama 3.1 scaling
        low_key = "rope_scaling_low_freq_factor_f32" if "rope_scaling_low_freq_factor_f32" in p else "rope_scaling_low_freq_factor"
        high_key = "rope_scaling_high_freq_factor_f32" if "rope_scaling_high_freq_factor_f32" in p else "rope_scaling_high_freq_factory"
        low = h.positive_float(low_key, 1.0) if low_key.endswith("_f32") else h.at_least(low_key, 1, default=1)
        high = h.positive_float(high_key, 4.0) if high_key.endswith("_f32") else h.at_least(high_key, 1, default=4)
        if high <= low:
            h.fail(high_key, f"must be above {low_key} = {_show(low)}", high)


def _check_fits(h: _Header, tensor_bytes: int, tensor_bytes_are: str, head_dim: int, n_dense: int, moe: bool,
                latent: bool) -> None:
    """Lower bounds of the tensor bytes each count implies, against what the file holds: every tensor at
    the smallest storage type (a per-tensor header key may give any tensor any type)."""
    p = h.p
    per_value = min(t.nbytes(t.block_size) / t.block_size for t in FloatType)
    dim, n_layers = p["dim"], p["n_layers"]
    attention_width = p["n_heads"] * (p["v_head_dim"] if latent else head_dim)  # the output projection's input
    # count -> (bytes, the other keys they depend on)
    needs = {
        "vocab_size": (2 * p["vocab_size"] * dim * per_value, ["dim"]),  # embedding and output head
        # per layer: two norms and the attention output projection; per dense layer: gate, up and down
        "n_layers": (n_layers * dim * (2 + attention_width) * per_value + n_dense * 3 * dim * p["hidden_dim"] * per_value,
                     ["dim", "hidden_dim", "n_heads"]),
    }
    if moe:
        needs["n_experts"] = ((n_layers - n_dense) * p["n_experts"] * 3 * dim * p["moe_hidden_dim"] * per_value,
                              ["n_layers", "dim", "moe_hidden_dim"])
    total = sum(n for n, _ in needs.values())
    if total > tensor_bytes:
        key = max(needs, key=lambda k: needs[k][0])
        n, factors = needs[key]
        h.fail(key, f"needs at least {n:,.0f} bytes of tensors (with {', '.join(f'{f} = {p[f]}' for f in factors)}), "
                    f"but there are only {tensor_bytes:,} {tensor_bytes_are}")
