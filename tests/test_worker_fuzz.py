"""Fuzz of the worker protocol: random and boundary-valued frames after a valid handshake (JOIN, SETUP,
weight replies, step headers; worker_protocol.fuzz_cases). The worker must end each bad session with a
logged reason, never die or hang, and then serve a real root correctly. benchmarks/fuzz.py runs the
same cases by the ten thousand."""

from __future__ import annotations

import os

from test_worker_protocol import llama, reference, serves_a_real_root  # noqa: F401 (fixtures)
from worker_protocol import fuzz_worker

N_CASES = int(os.environ.get("DLLAMA_FUZZ_CASES", "300"))


def test_worker_survives_fuzzed_frames(llama, reference):  # noqa: F811
    counts, failures = fuzz_worker(llama, N_CASES, seed=int(os.environ.get("DLLAMA_FUZZ_SEED", "1")),
                                   check=lambda worker: serves_a_real_root(worker, llama, reference))
    print(f"worker protocol fuzz: {counts}")
    assert counts["tried"] == N_CASES
    assert not failures, "\n".join(failures[:20])
