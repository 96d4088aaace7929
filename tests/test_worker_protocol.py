"""A worker against hostile and patient roots, over loopback with hand-made frames (worker_protocol.py):
every value from the wire is checked before use, a bad message ends only that session (with the reason
on the worker's stderr), idle or trickling connections never block a real root, and sessions survive
hours of silence while dead or hung peers are still found."""

from __future__ import annotations

import contextlib
import re
import shutil
import struct
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from hf_models import N_PREFILL
from worker_protocol import (COPY_PREFIX, FORWARD, STEP, FakeRoot, ModelSetup, WorkerProcess, frame, model_identity,
                             step_header, u8)

from dllama_py import Engine, _core


@pytest.fixture(scope="module")
def llama(tiny_models):
    return tiny_models.converted("llama", "f32")


@pytest.fixture(scope="module")
def reference(tiny_models, llama):
    ids = tiny_models.hf("llama")[1]
    with Engine(llama, threads=1) as eng:
        return ids, np.concatenate([eng.forward(ids[:N_PREFILL])] + [eng.forward([t]) for t in ids[N_PREFILL:]])


@pytest.fixture(scope="module")
def setup(llama):
    return ModelSetup.from_model(llama)


@pytest.fixture(scope="module")
def worker():
    with WorkerProcess() as w:
        yield w


def serves_a_real_root(worker: WorkerProcess, path, reference, **engine_args):
    """The worker, after whatever came before, splits the model with a real root and gets its logits right."""
    ids, single = reference
    assert worker.alive(), worker.log[-5:]
    with Engine(path, threads=1, workers=[worker.address], exchange="f32", **engine_args) as eng:
        split = np.concatenate([eng.forward(ids[:N_PREFILL])] + [eng.forward([t]) for t in ids[N_PREFILL:]])
    assert np.abs(split - single).max() <= 1e-4 * single.std()
    worker.wait_for("worker: session ended")


# --- SETUP: the config and the tensor table are checked before anything is sized from them -----------

BAD_SETUPS = {
    "no KV heads": (dict(n_kv_heads=0), "n_kv_heads is 0, expected 1..4"),
    "more KV heads than heads": (dict(n_kv_heads=8), "n_kv_heads is 8, expected 1..4"),
    "heads not a multiple of KV heads": (dict(n_kv_heads=3), "n_heads 4 is not a multiple of n_kv_heads 3"),
    "no context": (dict(seq_len=0), "seq_len is 0"),
    "no head dim": (dict(head_dim=0), "head_dim is 0"),
    "rope_dim over head_dim": (dict(rope_dim=64), "rope_dim is 64, expected 0..32"),
    "huge dim": (dict(dim=2**31 - 1), "dim is 2147483647"),
    "NaN norm epsilon": (dict(norm_eps=float("nan")), "norm_eps is nan"),
    "2^28 rope frequencies": (dict(rope_count=1 << 28), "rope_inv_freq is 268435456, but at most"),
    "2^24 tensors": (dict(tensor_count=1 << 24), "tensor count is 16777216, but at most"),
    "a KV cache larger than the machine": (dict(seq_len=1 << 22, n_layers=1024), "MiB of memory and swap"),
    "unknown exchange": (dict(exchange=7), "unknown exchange type 7"),
    "a split weight for one node of two": (dict(split=[1.0]), "bad SETUP: split has 1 weight for 2 nodes"),
    "split weights for 3 nodes of 2": (dict(split=[1.0, 1.0, 1.0]), "split weight count is 3, but at most 2"),
    "2^30 split weights": (dict(split_count=1 << 30), "split weight count is 1073741824, but at most"),
    "a NaN split weight": (dict(split=[1.0, float("nan")]), "split weight of node 1 is nan, expected a number above 0"),
    "a zero split weight": (dict(split=[0.0, 1.0]), "split weight of node 0 is 0, expected a number above 0"),
    "a negative split weight": (dict(split=[1.0, -2.0]), "split weight of node 1 is -2, expected"),
    "a huge split weight": (dict(split=[1.0, 1e30]), "split weight of node 1 is 1e+30, expected"),
    "unknown architecture": (dict(arch="gpt9"), "no graph builder named 'gpt9'"),
    "terminal escapes in a name": (dict(arch="llama\x1b[2J"), "arch contains byte 27"),
}


@pytest.mark.parametrize("case", BAD_SETUPS, ids=list(BAD_SETUPS))
def test_bad_setup_is_refused_before_allocation(worker, setup, llama, reference, case):
    changes, message = BAD_SETUPS[case]
    with FakeRoot(worker.port) as root:
        root.start_session()
        reason = root.setup(setup.copy(**changes))
    assert message in reason
    assert message in worker.wait_for("worker: session failed")
    serves_a_real_root(worker, llama, reference)


BAD_TENSORS = {
    "unknown type": (1, 9, "unknown type 9"),
    "2^40 rows": (2, 1 << 40, "impossible shape 1099511627776 x"),
    "no columns": (3, 0, "impossible shape"),
}


@pytest.mark.parametrize("case", BAD_TENSORS, ids=list(BAD_TENSORS))
def test_bad_tensor_table_is_refused(worker, setup, llama, reference, case):
    field, value, message = BAD_TENSORS[case]
    bad = setup.copy()
    bad.tensors[3][field] = value
    with FakeRoot(worker.port) as root:
        root.start_session()
        assert message in root.setup(bad)
    worker.wait_for("worker: session failed")
    serves_a_real_root(worker, llama, reference)


def test_a_tensor_of_another_shape_is_refused_not_overrun(worker, setup, llama, reference):
    """A norm vector of 4 values where the config says dim (128): refused, not read past its end."""
    bad = setup.copy()
    norm = next(t for t in bad.tensors if t[0] == "layers.0.attn_norm")
    norm[3] = 4
    with FakeRoot(worker.port) as root:
        root.start_session()
        assert "tensor layers.0.attn_norm (1 x 4) has no rows 0..1, columns 0..128" in root.setup(bad)
    serves_a_real_root(worker, llama, reference)


def test_weight_reply_of_the_wrong_size_is_refused(worker, setup, llama, reference):
    with FakeRoot(worker.port) as root:
        root.start_session()
        root.raw(frame(setup.payload()))
        root.sock.recv(1 << 16)  # the first request
        root.raw((1 << 62).to_bytes(8, "little"))
        assert "bytes of" in worker.wait_for("worker: session failed")
    serves_a_real_root(worker, llama, reference)


def test_local_model_offsets_cannot_wrap(llama, setup, reference, tmp_path):
    """With --model, a tensor offset near 2^64 used to wrap past the bounds check."""
    copy = tmp_path / "copy.m"
    shutil.copy(llama, copy)
    bad = setup.copy(identity=model_identity(copy))
    bad.tensors[2][4] = 2**64 - 100
    with WorkerProcess("--model", str(copy)) as w:
        with FakeRoot(w.port) as root:
            root.start_session()
            assert "ends past the end of the file" in root.setup(bad)
        serves_a_real_root(w, llama, reference)


# --- steps: n and pos against the chunk size and the context ------------------------------------------

BAD_STEPS = {
    "4096 rows with a 4 MiB payload": ((FORWARD, 4096, 0, 0), [], 4 << 20, "a step of 4096 rows (1..64 allowed)"),
    "-1 rows": ((FORWARD, -1, 0, 0), [], 0, "a step of -1 rows"),
    "position 50,000,000": ((FORWARD, 1, 0, 0), [(0, 50_000_000, 1)], 512, "position 50000000 is outside the context"),
    "a slot that does not exist": ((FORWARD, 1, 0, 0), [(7, 0, 1)], 512, "slot 7 is not a sequence slot"),
    "a logits flag of 2": ((FORWARD, 1, 0, 0), [(0, 0, 2)], 512, "logits flag must be 0 or 1"),
    "copying past the context": ((COPY_PREFIX, 0, 0, 1 << 30), [], 0, "positions of a context of 64"),
    "an unknown command": ((9, 0, 0, 0), [], 0, "unknown step command 9"),
}


@pytest.mark.parametrize("case", BAD_STEPS, ids=list(BAD_STEPS))
def test_bad_step_header_ends_the_session(worker, setup, llama, reference, case):
    header, rows, payload, message = BAD_STEPS[case]
    with FakeRoot(worker.port) as root:
        root.start_session()
        assert root.setup(setup) == "ready"
        with contextlib.suppress(ConnectionError):  # the worker may hang up before it all went out
            root.raw(u8(STEP) + step_header(*header, rows=rows) + bytes(payload))
        assert message in worker.wait_for("worker: session failed")
    serves_a_real_root(worker, llama, reference)


# --- connections that never finish their handshake ----------------------------------------------------

def test_idle_and_trickling_connections_do_not_block_a_root(worker, llama, reference):
    idle = [socket.create_connection(("127.0.0.1", worker.port)) for _ in range(20)]  # over the cap of 16
    stop = threading.Event()

    def trickle():  # one byte every 4 s
        with socket.create_connection(("127.0.0.1", worker.port)) as s, contextlib.suppress(ConnectionError):
            for b in b"DLPYNET\0":
                s.sendall(bytes([b]))
                if stop.wait(4):
                    return

    trickler = threading.Thread(target=trickle)
    trickler.start()
    try:
        time.sleep(0.3)
        start = time.monotonic()
        serves_a_real_root(worker, llama, reference)
        assert time.monotonic() - start < 4
        assert "connections were waiting for their handshake" in worker.saw("dropped")
    finally:
        stop.set()
        trickler.join()
        for s in idle:
            s.close()


def test_a_handshake_has_one_deadline(worker):
    """A byte every second keeps the I/O timeout (5 s) from firing, but not the handshake's deadline."""
    with socket.create_connection(("127.0.0.1", worker.port)) as s:
        s.settimeout(10)
        start = time.monotonic()
        with contextlib.suppress(ConnectionError):
            for b in b"DLPYNET\0" + bytes(8):
                s.sendall(bytes([b]))
                time.sleep(1)
        assert s.recv(100) == b""  # dropped without an answer
        assert 4.5 < time.monotonic() - start < 8
    assert "(waiting for data)" in worker.saw("did not finish within 5000 ms")


# --- long silence -------------------------------------------------------------------------------------

SHORT_TIMEOUTS = {"DLLAMA_NET_TIMEOUT": "0.5", "DLLAMA_HEARTBEAT": "0.2"}


@pytest.fixture(scope="module")
def quick_worker():
    """A worker whose step timeout is 0.5 s (a session used to end once it idled that long)."""
    with WorkerProcess(env=SHORT_TIMEOUTS) as w:
        yield w


def test_idle_session_outlives_the_step_timeout(quick_worker, llama, reference):
    """Idle 4x both sides' step timeout and 10x the heartbeat interval between two steps: the session lives."""
    ids, single = reference
    with Engine(llama, threads=1, workers=[quick_worker.address], exchange="f32", net_timeout=0.5,
                heartbeat=0.2) as eng:
        first = eng.forward(ids[:N_PREFILL])
        time.sleep(2.0)
        rest = [eng.forward([t]) for t in ids[N_PREFILL:]]
    split = np.concatenate([first] + rest)
    assert np.abs(split - single).max() <= 1e-4 * single.std()
    assert quick_worker.wait_for("worker: session") == "worker: session ended"


def test_worker_ends_a_session_whose_root_fell_silent(worker, setup, llama, reference):
    with FakeRoot(worker.port) as root:
        root.start_session(idle_limit_ms=600)
        assert root.setup(setup) == "ready"
        start = time.monotonic()
        line = worker.wait_for("worker: session failed")
        took = time.monotonic() - start
    assert "node 0 (127.0.0.1:" in line and "waiting for the next step or heartbeat" in line
    assert 0.5 <= took < 3  # the idle limit of 600 ms, give or take
    serves_a_real_root(worker, llama, reference)


def test_worker_answers_heartbeats(worker, setup):
    with FakeRoot(worker.port) as root:
        root.start_session(idle_limit_ms=500)
        assert root.setup(setup) == "ready"
        for _ in range(5):
            time.sleep(0.3)  # 1.5 s in all: the worker only stays because of the pings
            root.raw(u8(2))
            assert root.sock.recv(1) == u8(3)
    worker.wait_for("worker: session failed")


def test_root_reports_a_worker_that_hangs_while_idle(llama, reference, capfd):
    ids, _ = reference
    with WorkerProcess() as w:
        with Engine(llama, threads=1, workers=[w.address], exchange="f32", net_timeout=0.5, heartbeat=0.2) as eng:
            eng.forward(ids[:4])
            w.proc.send_signal(signal.SIGSTOP)
            try:
                time.sleep(1.5)  # a heartbeat, then its 0.5 s timeout
                assert f"lost the workers while idle: node 1 (127.0.0.1:{w.port})" in capfd.readouterr().err
                start = time.monotonic()
                with pytest.raises(RuntimeError, match=f"node 1 \\(127.0.0.1:{w.port}\\)"):
                    eng.forward([5])
                assert time.monotonic() - start < 0.5
            finally:
                w.proc.send_signal(signal.SIGCONT)
        serves_a_real_root(w, llama, reference)


@pytest.fixture(scope="module")
def chat_model(tiny_models, tmp_path_factory):
    """The tiny Llama with a tokenizer and chat template, for the CLI."""
    from scripted_glm import write_glm_tokenizer

    from dllama_py.convert import convert

    directory = tmp_path_factory.mktemp("chat_llama")
    shutil.copytree(tiny_models.hf("llama")[0], directory, dirs_exist_ok=True)
    write_glm_tokenizer(directory, [])
    out = directory / "chat.m"
    convert(directory, out, dtype="f32", progress=False, log=lambda *a: None)
    return out


def test_chat_with_workers_after_silence(quick_worker, chat_model):
    import os

    proc = subprocess.Popen([sys.executable, "-m", "dllama_py.cli", "chat", "-m", str(chat_model), "-t", "1",
                             "--workers", quick_worker.address, "-n", "3", "--temperature", "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **SHORT_TIMEOUTS})
    proc.stdin.write("Hello\n")
    proc.stdin.flush()
    time.sleep(2.5)  # the user thinks: 5x the step timeout
    out, err = proc.communicate("And now?\n", timeout=60)
    assert proc.returncode == 0, err
    assert "error" not in err
    assert quick_worker.wait_for("worker: session") == "worker: session ended"  # not "failed"


def test_serve_with_workers_after_silence(quick_worker, chat_model):
    import json
    import os
    import urllib.request

    proc = subprocess.Popen([sys.executable, "-m", "dllama_py.cli", "serve", "-m", str(chat_model), "-t", "1",
                             "--workers", quick_worker.address, "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **SHORT_TIMEOUTS})
    try:
        url = re.search(r" on (http://\S+?)/? ", proc.stdout.readline()).group(1) + "/v1"
        body = json.dumps({"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3,
                           "temperature": 0}).encode()

        def ask():
            req = urllib.request.Request(url + "/chat/completions", body, {"Content-Type": "application/json"})
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())

        assert ask()[0] == 200
        time.sleep(2.5)
        status, reply = ask()
        assert status == 200 and reply["usage"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert quick_worker.wait_for("worker: session") == "worker: session ended"


# --- progress while the workers load ------------------------------------------------------------------

def test_root_shows_each_workers_progress(llama):
    """The root's progress callback sees what a worker reports (PROGRESS frames) until it is READY."""
    from worker_protocol import FakeWorker, PROGRESS, LOADED, u64

    from dllama_py import _core

    fake = FakeWorker()
    seen = []

    def act():
        fake.accept_session()
        for done in (30, 60, 100):
            fake.sock.sendall(frame(u8(PROGRESS) + u64(done << 20) + u64(100 << 20)))
            time.sleep(0.5)
        fake.sock.sendall(frame(u8(LOADED)))

    worker = threading.Thread(target=act)
    worker.start()
    try:
        with Engine(llama, threads=1) as single:  # for the root's share: the same config and tensors
            config = single.config
            tensors = [_core.TensorInfo(t.spec.name, _core.FloatType(int(t.dtype)), t.spec.rows, t.spec.cols,
                                        t.offset) for t in single.layout.tensors]
        model = _core.Model(str(llama), config, tensors, 1, workers=[fake.address], exchange="f32",
                            workers_progress=lambda status: seen.append(status))
        worker.join()
        assert [(30 << 20, 100 << 20)] in seen and [(60 << 20, 100 << 20)] in seen
        assert model.n_nodes == 2
        del model
    finally:
        fake.close()
        worker.join()


def test_worker_reports_progress_while_it_loads(worker, setup):
    """A worker whose weights come slowly tells the root how far it got every second."""
    from worker_protocol import PROGRESS, REQUEST, recv_frame, slice_bytes, u64

    data = setup.path.read_bytes()
    reports = []
    with FakeRoot(worker.port) as root:
        root.start_session()
        root.raw(frame(setup.payload()))
        while len(reports) < 2:
            msg = recv_frame(root.sock)
            if msg[0] == PROGRESS:
                reports.append(struct.unpack("<2Q", msg[1:17]))
                continue
            assert msg[0] == REQUEST
            n = struct.unpack("<I", msg[1:5])[0]
            r0, r1, c0, c1 = struct.unpack("<4Q", msg[5 + n:5 + n + 32])
            body = slice_bytes(data, setup, msg[5:5 + n].decode(), r0, r1, c0, c1)
            time.sleep(0.2)
            root.raw(u64(len(body)) + body)
    assert reports[0][0] <= reports[1][0] and reports[1][0] > 0
    assert reports[0][1] == reports[1][1] > 0  # the estimate of the whole share
    assert "worker: loaded" in worker.saw("MB/s")


# --- dllama-py cluster check --------------------------------------------------------------------------

def test_cluster_check(llama, capsys):
    from dllama_py.cli import main

    with WorkerProcess("--secret", "s3cret") as good, WorkerProcess("--secret", "other") as wrong, \
            WorkerProcess() as stopped:
        stopped.close()
        assert main(["cluster", "check", good.address, wrong.address, stopped.address, "--secret", "s3cret"]) == 1
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].startswith(f"{good.address}: ok, protocol {_core.protocol_version()}, secret accepted, ")
        assert "cores" in lines[0] and "RAM free" in lines[0] and "round trip" in lines[0]
        assert lines[1] == f"{wrong.address}: NOT READY: {wrong.address}: authentication failed: wrong secret"
        assert lines[2] == f"{stopped.address}: NOT READY: {stopped.address}: connection refused"

        assert main(["cluster", "check", good.address, "--secret", "s3cret", "-m", str(llama), "-t", "1"]) == 0
        out = capsys.readouterr().out
        assert "on 2 nodes (weights and KV cache): root " in out and " fits" in out and f"{good.address} " in out
        assert "expected decode: about" in out
        # Planned for a split: by hand, and what --split auto would choose (one line, then the plan).
        check = ["cluster", "check", good.address, "--secret", "s3cret", "-m", str(llama), "-t", "1", "--split"]
        assert main(check + ["3,1"]) == 0
        assert "on 2 nodes (weights and KV cache): root " in capsys.readouterr().out
        assert main(check + ["auto"]) == 0
        lines = capsys.readouterr().out.splitlines()
        auto = next(i for i, line in enumerate(lines) if line.startswith("split auto: "))
        assert "(read GB/s: root " in lines[auto] and f", {good.address} " in lines[auto]
        assert lines[auto + 1].startswith(f"{llama} on 2 nodes (weights and KV cache): root ")
        assert main(check + ["1,2,3"]) == 1
        assert "--split 1,2,3: split has 3 weights for 2 nodes" in capsys.readouterr().err
        # A probe starts no session: the worker still serves a root.
        with Engine(llama, threads=1, workers=[good.address], secret="s3cret") as eng:
            assert eng.forward([1, 2]).shape == (2, 384)


# --- the worker's slice cache -------------------------------------------------------------------------

def test_second_session_comes_from_the_workers_cache(tiny_models, llama, reference, tmp_path):
    """A second session with the same model and split sends < 1% of the first's weight bytes and gets the
    same logits; another split (node count or --split weights), another model, or another fine-tune of
    the same shapes re-streams."""
    from hf_models import random_model

    from dllama_py.convert import convert

    ids, single = reference
    cache = tmp_path / "cache"

    def session(workers, path=llama, split=None):
        with Engine(path, threads=1, workers=[w.address for w in workers], exchange="f32", split=split) as eng:
            logits = np.concatenate([eng.forward(ids[:N_PREFILL])] + [eng.forward([t]) for t in ids[N_PREFILL:]])
            return logits, eng.load_net_stats["bytes_sent"]

    with WorkerProcess("--cache-dir", str(cache)) as w1, WorkerProcess("--cache-dir", str(cache)) as w2:
        first, sent_first = session([w1])
        assert "(0.0 MB of them from the cache)" in w1.saw("this node's share takes")
        second, sent_second = session([w1])
        assert sent_second < 0.01 * sent_first
        assert "MB of them from the cache" in w1.wait_for("this node's share takes")
        assert np.array_equal(first, second) and np.abs(first - single).max() <= 1e-4 * single.std()

        three, sent_split = session([w1, w2])  # another split: each worker's share is new to it
        assert sent_split > 0.5 * sent_first and np.abs(three - single).max() <= 1e-4 * single.std()

        folders = {f for f in cache.iterdir() if f.is_dir()}
        uneven, sent_uneven = session([w1], split=[1, 3])  # the same nodes, weighted: a folder of its own
        assert sent_uneven > 0.5 * sent_first and np.abs(uneven - single).max() <= 1e-4 * single.std()
        assert len({f for f in cache.iterdir() if f.is_dir()} - folders) == 1
        _, sent_again = session([w1], split=[1, 3])
        assert sent_again < 0.01 * sent_first

        hf_dir = tmp_path / "tuned"  # the same shapes and header, other weights: like a fine-tune
        random_model("llama", seed=123).save_pretrained(hf_dir)
        tuned = tmp_path / "tuned.m"
        convert(hf_dir, tuned, dtype="f32", progress=False, log=lambda *a: None)
        assert tuned.stat().st_size == llama.stat().st_size
        with Engine(tuned, threads=1) as eng:
            tuned_single = eng.forward(ids[:N_PREFILL])
        with Engine(tuned, threads=1, workers=[w1.address], exchange="f32") as eng:
            assert eng.load_net_stats["bytes_sent"] > 0.5 * sent_first
            assert np.abs(eng.forward(ids[:N_PREFILL]) - tuned_single).max() <= 1e-4 * tuned_single.std()


def test_cache_stays_under_its_limit(llama, tiny_models, tmp_path):
    """With room for one model's slices, a second model pushes out the first (least recently used)."""
    cache = tmp_path / "cache"
    other = tiny_models.converted("glm4", "f32")
    limit_gb = 1.5 * max(llama.stat().st_size, other.stat().st_size) / 2 / 1e9
    with WorkerProcess("--cache-dir", str(cache), "--cache-max-gb", str(limit_gb)) as w:
        for path in (llama, other):
            with Engine(path, threads=1, workers=[w.address], exchange="f32") as eng:
                eng.forward([1, 2, 3])
        folders = [f for f in cache.iterdir() if f.is_dir()]
        assert len(folders) == 1
        assert sum(f.stat().st_size for f in folders[0].iterdir()) <= limit_gb * 1e9


def test_a_ready_worker_outlasts_a_slow_one(quick_worker, llama):
    """Worker 1 is READY at once, worker 2 loads for 8 s (twice worker 1's idle limit): the root keeps
    worker 1's session alive meanwhile. (The fake worker 2 answers heartbeats from a thread of this
    process, which a loaded machine and a sanitizer build can hold up for a second or more: hence the
    root's 3 s timeout.)"""
    from worker_protocol import FakeWorker, PROGRESS, LOADED, u64

    slow = FakeWorker()

    def load_slowly():
        slow.accept_session()
        for done in range(40):  # more often than the root's 3 s timeout
            slow.sock.sendall(frame(u8(PROGRESS) + u64(done) + u64(40)))
            time.sleep(0.2)
        slow.sock.sendall(frame(u8(LOADED)))
        with contextlib.suppress(OSError):  # then answer heartbeats until the root hangs up
            while ping := slow.sock.recv(1):
                if ping == u8(2):
                    slow.sock.sendall(u8(3))

    thread = threading.Thread(target=load_slowly)
    thread.start()
    try:
        eng = Engine(llama, threads=1, workers=[quick_worker.address, slow.address], exchange="f32",
                     net_timeout=3.0, heartbeat=0.5)  # worker 1 gives up after 2 x 0.5 + 3 s
        assert not [line for line in quick_worker.drain() if "session failed" in line]
        eng.close()  # the stop step: worker 1 ends the session as asked, not because it gave up
        assert quick_worker.wait_for("worker: session") == "worker: session ended"
    finally:
        slow.close()
        thread.join()


def test_validate_config_is_exposed(setup):
    """The checks SETUP gets are the ones every build runs, and Python can call them on a header's config."""
    from dllama_py import _core
    from dllama_py.architectures import read_layout
    from dllama_py.engine import model_config

    config = model_config(read_layout(setup.path), 64)
    _core.validate_config(config)
    config.n_kv_heads = 3
    with pytest.raises(ValueError, match="n_heads 4 is not a multiple of n_kv_heads 3"):
        _core.validate_config(config)
