"""RoPE frequencies for every scaling the supported models use (none, Llama 3.1, YaRN), computed the
way transformers computes them. The C++ core only turns them into cos/sin tables."""

from __future__ import annotations

import math

import numpy as np

from .model_file import RopeType


def default_inv_freq(rope_dim: int, theta: float) -> np.ndarray:
    return (1.0 / theta ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)).astype(np.float32)


def llama3_inv_freq(inv_freq: np.ndarray, factor: float, low_freq_factor: float, high_freq_factor: float,
                    original_max_position: int) -> np.ndarray:
    """Llama 3.1: long wavelengths divided by factor, short ones kept, a smooth blend between."""
    low_wavelen = original_max_position / low_freq_factor
    high_wavelen = original_max_position / high_freq_factor
    wavelen = 2 * math.pi / inv_freq.astype(np.float64)
    smooth = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    return np.where(medium, blended, scaled).astype(np.float32)


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def yarn_inv_freq(rope_dim: int, theta: float, factor: float, original_max_position: int, beta_fast: float = 32,
                  beta_slow: float = 1, truncate: bool = True) -> np.ndarray:
    """YaRN: interpolated (divided by factor) frequencies for the dims that rotate fewer than beta_slow
    times over the original context, original ones above beta_fast rotations, a linear ramp between."""

    def correction_dim(rotations: float) -> float:
        return rope_dim * math.log(original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rope_dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(rope_dim // 2, dtype=np.float32) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = theta ** (np.arange(0, rope_dim, 2, dtype=np.float64) / rope_dim)
    inv = (1 / (factor * pos_freqs)) * (1 - extrapolation) + (1 / pos_freqs) * extrapolation
    return inv.astype(np.float32)


def rope_frequencies(p: dict, rope_dim: int, theta: float) -> tuple[np.ndarray, float]:
    """(inverse frequencies [rope_dim/2], factor multiplying cos and sin) for a .m header."""
    rope_type = p.get("rope_type")
    factor = p.get("rope_scaling_factor_f32") or float(p.get("rope_scaling_factor", 1))
    if rope_type == RopeType.YARN:
        inv = yarn_inv_freq(rope_dim, theta, factor, p["rope_scaling_orig_max_seq_len"],
                            p.get("yarn_beta_fast_f32", 32.0), p.get("yarn_beta_slow_f32", 1.0),
                            bool(p.get("yarn_truncate", 1)))
        return inv, p.get("yarn_attention_factor_f32", yarn_mscale(factor))
    inv = default_inv_freq(rope_dim, theta)
    # distributed-llama applies Llama 3.1 scaling whenever the factor is not 1 (its LLAMA3_1 type).
    if factor != 1.0 and rope_type in (None, RopeType.LLAMA, RopeType.LLAMA3_1):
        low = p.get("rope_scaling_low_freq_factor_f32") or float(p.get("rope_scaling_low_freq_factor", 1))
        high = p.get("rope_scaling_high_freq_factor_f32") or float(p.get("rope_scaling_high_freq_factory", 4))
        inv = llama3_inv_freq(inv, factor, low, high, p.get("rope_scaling_orig_max_seq_len") or 8192)
    return inv, 1.0
