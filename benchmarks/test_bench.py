"""pytest-benchmark timings of a decode step and a prefill chunk (not part of the test suite under tests/).

    python -m pytest benchmarks/test_bench.py --benchmark-only

The model has Llama-3.2-1B's layer widths (dim 2048, FFN 8192, 32 query / 8 KV heads) but 2 layers and an
8k vocabulary, so making and converting it takes seconds; per-layer costs are those of the real model.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from make_model import PRESETS, write_checkpoint  # noqa: E402

THREADS = 2
PROMPT = 128
STREAMS = 8  # sequences decoded together in test_batched_decode_step


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-llama")
    cfg = dict(PRESETS["llama-1b"], num_hidden_layers=2, vocab_size=8192)
    write_checkpoint(cfg, out)
    return out


@pytest.fixture(scope="session", params=["q40", "q80"])
def engine(request, checkpoint, tmp_path_factory):
    from dllama_py import Engine
    from dllama_py.convert import convert

    path = tmp_path_factory.mktemp("bench-m") / f"model-{request.param}.m"
    convert(checkpoint, path, dtype=request.param, progress=False, log=lambda *a, **k: None)
    eng = Engine(path, threads=THREADS, max_seq_len=1024, max_sequences=STREAMS)
    eng.forward([1, 2, 3, 4], all_logits=False)  # page in the weights, start the threads
    eng.reset()
    yield eng
    eng.close()


def _prompt(eng):
    return np.random.default_rng(0).integers(0, eng.config.vocab_size, PROMPT).tolist()


def test_prefill_chunk(benchmark, engine):
    prompt = _prompt(engine)
    benchmark.extra_info["tokens"] = PROMPT
    benchmark.pedantic(engine.forward, args=(prompt,), kwargs={"all_logits": False}, setup=engine.reset,
                       rounds=5, warmup_rounds=1)
    benchmark.extra_info["tokens_per_s"] = PROMPT / benchmark.stats.stats.median


def test_decode_step(benchmark, engine):
    engine.reset()
    engine.forward(_prompt(engine), all_logits=False)

    def step():
        if engine.position >= 512:  # keep the KV length in a realistic, bounded range
            engine.reset()
            engine.forward(_prompt(engine), all_logits=False)
        engine.forward([7], all_logits=False)

    benchmark.pedantic(step, rounds=60, warmup_rounds=3)
    benchmark.extra_info["tokens_per_s"] = 1 / benchmark.stats.stats.median
    benchmark.extra_info["weight_bytes_per_token"] = engine.model.weight_bytes_per_token


def test_batched_decode_step(benchmark, engine):
    """One step decoding a token of each of STREAMS sequences (every weight read once for all of them)."""
    model = engine.model
    prompt = np.asarray(_prompt(engine), dtype=np.int32)
    slots = np.arange(STREAMS, dtype=np.int32)
    wants = np.ones(STREAMS, dtype=bool)

    def setup():
        for s in range(STREAMS):
            model.truncate(s, 0)
            model.forward(prompt, False, s)

    def step():
        model.step(np.full(STREAMS, 7, dtype=np.int32), slots, np.array([model.length(s) for s in slots], np.int32),
                   wants)

    benchmark.pedantic(step, setup=setup, rounds=20, warmup_rounds=2)
    benchmark.extra_info["streams"] = STREAMS
    benchmark.extra_info["tokens_per_s"] = STREAMS / benchmark.stats.stats.median
