"""Tensor parallelism over loopback TCP: a root and 1-3 workers must give the single-node logits;
workers survive garbage and bad secrets; a dead worker is reported quickly, not waited for."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from batch_schedules import alone, make_sequences, max_error, run_batched
from hf_models import CONFIGS, N_PREFILL

from dllama_py import Engine, _core


class Workers:
    """In-process workers (each serving in its own thread, the GIL released while it runs)."""

    def __init__(self, n: int = 0, secret: str = "", local_models=(), threads: int = 1):
        self.workers = [_core.Worker("127.0.0.1", 0, threads, secret) for _ in range(n)]
        self.workers += [_core.Worker("127.0.0.1", 0, threads, secret, str(m)) for m in local_models]
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._serve, args=(w,), daemon=True) for w in self.workers]
        for t in self.threads:
            t.start()

    def _serve(self, worker):
        while not self.stop.is_set():
            worker.serve_one(100)

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{w.port}" for w in self.workers]

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=10)


@pytest.fixture(scope="module")
def workers():
    w = Workers(3)
    yield w
    w.close()


def run(path, ids, workers=(), exchange=None, secret=None, split=None) -> np.ndarray:
    with Engine(path, threads=1, workers=list(workers), exchange=exchange, secret=secret, split=split) as eng:
        logits = [eng.forward(ids[:N_PREFILL])] + [eng.forward([t]) for t in ids[N_PREFILL:]]
        assert eng.n_nodes == 1 + len(workers)
    return np.concatenate(logits)


@pytest.mark.parametrize("n_workers", [1, 2, 3])
@pytest.mark.parametrize("name", ["llama", "glm4", "glm4_moe_air", "glm4_moe_lite"])
def test_f32_exchange_equals_single_node(tiny_models, workers, name, n_workers):
    path = tiny_models.converted(name, "f32")
    ids = tiny_models.hf(name)[1]
    single = run(path, ids)
    split = run(path, ids, workers.addresses[:n_workers], exchange="f32")
    assert np.abs(split - single).max() <= 1e-4 * single.std()


@pytest.mark.parametrize("n_workers", [1, 2, 3])
@pytest.mark.parametrize("name", ["llama", "glm4", "glm4_moe_air", "glm4_moe_lite"])
def test_q80_exchange_within_q80_bound(tiny_models, workers, name, n_workers):
    """Partial sums sent as Q80: against transformers within the Q80 bound (F32 weights, so that
    every node count splits them)."""
    _, ids, ref = tiny_models.hf(name)
    split = run(tiny_models.converted(name, "f32"), ids, workers.addresses[:n_workers], exchange="q80")
    assert np.abs(split - ref).max() <= 0.08 * ref.std()
    assert (split.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("n_workers, split", [(1, None), (3, None), (2, [1, 2, 1])])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_batched_steps_with_workers_equal_each_sequence_alone(tiny_models, workers, name, n_workers, split):
    """Sequences joining and leaving slots at different positions, with prefix copies, on 2 and 4 nodes
    and on 3 nodes with an uneven split."""
    path = tiny_models.converted(name, "f32")
    with Engine(path, threads=1, max_sequences=3, max_seq_len=128) as eng:
        seqs = make_sequences(eng.config.vocab_size, seed=len(name) + 100)
        references = [alone(eng.model, s) for s in seqs]
    with Engine(path, threads=2, max_sequences=3, max_seq_len=128, workers=workers.addresses[:n_workers],
                exchange="f32", split=split) as eng:
        batched = run_batched(eng.model, seqs, seed=n_workers)
    assert max_error(batched, references) <= 1e-4


@pytest.mark.parametrize("name", ["qwen3_moe", "glm4_moe_lite"])
def test_scheduled_generations_with_workers_equal_one_at_a_time(tiny_models, workers, name):
    """Greedy generations sharing steps on 2 nodes against the same prompts run one at a time there."""
    path = tiny_models.converted(name, "q40")
    prompts = make_sequences(384, seed=21, n=5)
    with Engine(path, threads=1, max_sequences=3, workers=workers.addresses[:1]) as eng:
        alone_tokens = [list(eng.scheduler.submit(p, max_tokens=8)) for p in prompts]
        requests = [eng.scheduler.submit(p, max_tokens=8) for p in prompts]
        together = [list(r) for r in requests]
    assert together == alone_tokens


@pytest.mark.parametrize("n_workers", [1, 2, 3])
def test_q80_weights_and_exchange(tiny_models, workers, n_workers):
    _, ids, ref = tiny_models.hf("llama")
    split = run(tiny_models.converted("llama", "q80"), ids, workers.addresses[:n_workers], exchange="q80")
    assert np.abs(split - ref).max() <= 0.08 * ref.std()
    assert (split.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


@pytest.mark.parametrize("name", ["llama", "glm4", "glm4_moe_air", "glm4_moe_lite"])
def test_uneven_split_with_q80_exchange_and_quantized_weights(tiny_models, workers, name):
    """--split with Q80 exchange: transformers' logits within the Q80 bound. With Q40 weights, whose shares
    are whole 32-value groups, and F32 exchange: the 1-node Q40 logits."""
    _, ids, ref = tiny_models.hf(name)
    split = run(tiny_models.converted(name, "f32"), ids, workers.addresses[:2], exchange="q80", split=[1, 2, 1])
    assert np.abs(split - ref).max() <= 0.08 * ref.std()
    assert (split.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    path = tiny_models.converted(name, "q40")
    single = run(path, ids)
    # the MoE models' 64-row experts are 2 groups of 32 rows: 2 nodes at most
    for weights in [[3, 1]] + ([[2, 1, 1]] if "moe" not in name else []):
        split = run(path, ids, workers.addresses[:len(weights) - 1], exchange="f32", split=weights)
        assert np.abs(split - single).max() <= 1e-4 * single.std(), weights


def test_traffic_is_counted(tiny_models, workers):
    path = tiny_models.converted("llama", "f32")
    with Engine(path, threads=1, workers=workers.addresses[:1], exchange="f32") as eng:
        eng.forward([1, 2, 3])
        eng.reset_net_stats()
        eng.forward([4])
        stats = eng.net_stats()
    dim, layers = 128, 2
    # Per token the root sends its partial twice per layer (f32), the step header and the embedded row.
    assert stats["bytes_sent"] >= 2 * layers * dim * 4 + dim * 4
    assert stats["syncs"] >= 2 * layers and stats["seconds_in_sync"] > 0


def test_worker_survives_garbage_and_a_wrong_secret(tiny_models):
    guarded = Workers(1, secret="s3cret")
    try:
        with socket.create_connection(("127.0.0.1", guarded.workers[0].port)) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + os.urandom(64))
        path = tiny_models.converted("llama", "q40")
        with pytest.raises(RuntimeError, match="authentication failed|wrong secret"):
            Engine(path, threads=1, workers=guarded.addresses, secret="wrong")
        with Engine(path, threads=1, workers=guarded.addresses, secret="s3cret") as eng:
            assert eng.forward([1, 2, 3]).shape == (3, 384)
    finally:
        guarded.close()


def test_impossible_split_names_the_constraint(tiny_models, workers):
    # 3 workers + root = 4 nodes, but Q40's 64-wide expert FFN has only 2 blocks of 32 to share.
    with pytest.raises(Exception, match=r"across 4 nodes: layers\.2\.moe\.(shared|experts\.0)\.down \(q40\) can only be "
                                        r"cut between 32-value blocks of its 64 input columns.*; it runs on 1 to 2 nodes"):
        Engine(tiny_models.converted("glm4_moe_46", "q40"), threads=1, workers=workers.addresses)
    # With head_dim 48, a share of the output projection's columns ends on a Q40 block only after every 2 heads.
    with pytest.raises(Exception, match=r"across 3 nodes: layers\.0\.attn\.o \(q40\) .* after every 2 of its 4 heads "
                                        r"of 48 columns; it runs on 1 to 2 nodes"):
        Engine(tiny_models.converted("glm4_moe_air", "q40"), threads=1, workers=workers.addresses[:2])
    # Uneven: with 2 groups of heads (and of expert rows), a node with less than half the weight gets none.
    with pytest.raises(ValueError, match=r"across 2 nodes: .* split 1,10 gives node 0 none of them: every node's "
                                         r"weight must be at least 1/2 of the sum"):
        Engine(tiny_models.converted("glm4_moe_air", "q40"), threads=1, workers=workers.addresses[:1], split=[1, 10])


def test_dead_worker_is_reported_within_seconds(tiny_models, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "dllama_py.cli", "worker", "--host", "127.0.0.1", "--port", "0",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        line = proc.stdout.readline()
        port = int(line.rsplit(":", 1)[1])
        with Engine(tiny_models.converted("llama", "q40"), threads=1, workers=[f"127.0.0.1:{port}"]) as eng:
            pieces = 0
            eng.forward([1, 2, 3])
            for t in range(5):
                eng.forward([t])
                pieces += 1
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
            start = time.monotonic()
            with pytest.raises(RuntimeError, match=f"127.0.0.1:{port}"):
                eng.forward([7])
            assert time.monotonic() - start < 5
            assert pieces == 5
    finally:
        proc.kill()
        proc.wait()


def test_worker_with_a_local_copy_of_the_model(tiny_models):
    path = tiny_models.converted("glm4", "f32")
    ids = tiny_models.hf("glm4")[1]
    local = Workers(local_models=[path, tiny_models.converted("llama", "f32")])  # the second is another model
    try:
        split = run(path, ids, local.addresses[:1], exchange="f32")
        single = run(path, ids)
        assert np.abs(split - single).max() <= 1e-4 * single.std()
        with pytest.raises(RuntimeError, match="is not the root's model file"):
            Engine(path, threads=1, workers=local.addresses[1:])
    finally:
        local.close()
