"""Our Q40/Q80 bytes against distributed-llama's documented quantization rule (docs/model-format.md)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from dllama_py import _core


def q40_rule(x: np.ndarray) -> bytes:
    """distributed-llama's Q40 rule, block by block: d = (value of largest magnitude) / -8, stored as
    f16; q = clamp(trunc(x * (1/d) + 8.5), 0, 15) in float32; low nibbles hold elements 0..15."""
    out = b""
    for block in x.astype(np.float32).reshape(-1, 32):
        gmax, gmin = block.max(), block.min()
        d = np.float32((gmin if -gmin > gmax else gmax) / np.float32(-8))
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        q = [min(max(int(np.float32(np.float32(v * inv) + np.float32(8.5))), 0), 15) for v in block]
        out += np.float16(d).tobytes() + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    return out


def q80_rule(x: np.ndarray) -> bytes:
    """distributed-llama's Q80 rule: d = max|x| / 127 as f16, q = round_half_even(x * (1/d))."""
    out = b""
    for block in x.astype(np.float32).reshape(-1, 32):
        amax = max(block.max(), -block.min())
        d = np.float32(amax / np.float32(127))
        inv = np.float32(1) / d if d != 0 else np.float32(0)
        q = [int(np.round(np.float32(v * inv))) for v in block]
        out += np.float16(d).tobytes() + struct.pack("32b", *q)
    return out


def test_q40_hand_computed_block():
    # x = -16..15: the largest magnitude is -16, so d = 2 and q = trunc(x/2 + 8.5), clamped to 15.
    x = np.arange(-16, 16, dtype=np.float32)
    q = [min(int(j / 2 + 0.5), 15) for j in range(32)]
    expected = struct.pack("<e", 2.0) + bytes(q[j] | (q[j + 16] << 4) for j in range(16))
    assert _core.quantize_q40(x) == expected
    assert q40_rule(x) == expected


def test_q80_rounds_half_to_even():
    x = np.zeros(32, np.float32)
    x[:5] = [127.0, 2.5, 3.5, -2.5, 0.5]  # d = 1: ties go to the even neighbour
    out = _core.quantize_q80(x)
    assert struct.unpack("<e", out[:2])[0] == 1.0
    assert list(struct.unpack("5b", out[2:7])) == [127, 2, 4, -2, 0]


@pytest.mark.parametrize("kind", ["normal", "uniform", "zeros", "ties", "outlier"])
def test_golden_bytes_match_the_rule(kind):
    rng = np.random.default_rng(7)
    x = {
        "normal": rng.standard_normal(32 * 64),
        "uniform": rng.uniform(-3, 3, 32 * 64),
        "zeros": np.zeros(32 * 4),
        "ties": np.round(rng.uniform(-8, 8, 32 * 16) * 2) / 2,  # many exact .5 quotients
        "outlier": np.concatenate([rng.standard_normal(32 * 8), [1e4] * 32]),
    }[kind].astype(np.float32)
    assert _core.quantize_q40(x) == q40_rule(x)
    assert _core.quantize_q80(x) == q80_rule(x)


def test_rejects_partial_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        _core.quantize_q40(np.zeros(33, np.float32))
