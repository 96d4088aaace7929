"""Our logits against transformers' for tiny random models, per architecture and weight type.

Each model runs a 24-token sequence: a 16-token prefill chunk, then 8 single-token decode steps,
and every position's logits are compared with the reference forward over the whole sequence.
Bounds are relative to the standard deviation of the reference logits.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import record_parity
from hf_models import CONFIGS, N_PREFILL

from dllama_py import Engine

# max |ours - reference| / std(reference), and the share of positions whose argmax must agree
BOUNDS = {"f32": (1e-3, 1.0), "f16": (2e-2, 0.9), "q80": (0.08, 0.9), "q40": (None, None)}


THREADS = 2


def run_prefill_then_decode(path, ids) -> np.ndarray:
    with Engine(path, threads=THREADS) as eng:
        logits = [eng.forward(ids[:N_PREFILL])]
        for t in ids[N_PREFILL:]:
            logits.append(eng.forward([t]))
        assert eng.position == len(ids)
        return np.concatenate(logits)


@pytest.mark.parametrize("dtype", list(BOUNDS))
@pytest.mark.parametrize("name", list(CONFIGS))
def test_logits_match_transformers(tiny_models, name, dtype):
    _, ids, ref = tiny_models.hf(name)
    ours = run_prefill_then_decode(tiny_models.converted(name, dtype), ids)
    assert ours.shape == ref.shape
    rel = float(np.abs(ours - ref).max() / ref.std())
    agree = float((ours.argmax(-1) == ref.argmax(-1)).mean())
    record_parity(name, dtype, THREADS, 1, rel, agree)
    max_rel, min_agree = BOUNDS[dtype]
    if max_rel is None:  # Q40: figures are reported; still far closer than unrelated logits (~4 x std)
        assert rel < 1.0 and agree >= 0.5
        return
    assert rel <= max_rel
    assert agree >= min_agree
