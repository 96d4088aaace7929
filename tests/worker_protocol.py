"""A hand-made root for `dllama-py worker`: every frame of the session protocol built byte by byte
(docs/distributed.md), so that tests can send a worker what a real root never would. Also the
worker-protocol fuzz target (cases of random and boundary-valued frames) shared by
tests/test_worker_fuzz.py and benchmarks/fuzz.py.

Frames here are written from the protocol description, not from the C++ code: a disagreement between
the two is a bug this module is meant to find.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import queue
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

MAGIC = b"DLPYNET\0"
VERSION = 5
ROLE_ROOT, ROLE_PEER = 1, 2
# mesh frames
JOIN, BUILD, READY, FAILED, START = 1, 2, 5, 6, 7
# model setup frames
SETUP, REQUEST, LOADED, LOAD_FAILED, PROGRESS = 1, 2, 3, 4, 5
# between steps
STEP, PING, PONG = 1, 2, 3
# step commands (cpp/model.h)
STOP, FORWARD, COPY_PREFIX, MTP = 0, 1, 2, 3

# The config fields of SETUP in wire order (cpp/config.h's table) after arch and weight_type: "i" an
# i32 (booleans and enums too), "f" an f32, "v" the rope frequencies (u32 count, then f32s).
CONFIG_FIELDS = [("dim", "i"), ("hidden_dim", "i"), ("n_layers", "i"), ("n_heads", "i"), ("n_kv_heads", "i"),
                 ("head_dim", "i"), ("vocab_size", "i"), ("seq_len", "i"), ("max_sequences", "i"), ("kv_f16", "i"),
                 ("norm_eps", "f"), ("rope_theta", "f"), ("rope_dim", "i"), ("rope_style", "i"),
                 ("rope_inv_freq", "v"), ("rope_attention_factor", "f"), ("attention_bias", "i"), ("qk_norm", "i"),
                 ("n_experts", "i"), ("n_active_experts", "i"), ("moe_hidden_dim", "i"), ("n_shared_experts", "i"),
                 ("n_dense_layers", "i"), ("n_expert_groups", "i"), ("topk_groups", "i"), ("routed_scaling", "f"),
                 ("norm_topk_prob", "i"), ("q_lora_rank", "i"), ("kv_lora_rank", "i"), ("qk_nope_dim", "i"),
                 ("qk_rope_dim", "i"), ("v_head_dim", "i"), ("latent_norm_eps", "f"), ("attention_scale", "f"),
                 ("attention_out_bias", "i"), ("n_mtp_layers", "i")]
CONFIG_INTS = [name for name, kind in CONFIG_FIELDS if kind == "i"]
CONFIG_FLOATS = [name for name, kind in CONFIG_FIELDS if kind == "f"]


def u8(v: int) -> bytes:
    return struct.pack("<B", v & 0xFF)


def u32(v: int) -> bytes:
    return struct.pack("<I", v & 0xFFFFFFFF)


def i32(v: int) -> bytes:
    return struct.pack("<i", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)


def f32(v: float) -> bytes:
    return struct.pack("<f", v)


def string(s: bytes | str) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return u32(len(b)) + b


def frame(payload: bytes) -> bytes:
    return u32(len(payload)) + payload


def step_header(command: int, a: int = 0, b: int = 0, c: int = 0, rows=()) -> bytes:
    """A step header (i32 command, a, b, c) and its rows (i32 slot, position, wants logits), no STEP byte."""
    return i32(command) + i32(a) + i32(b) + i32(c) + b"".join(i32(s) + i32(p) + i32(lg) for s, p, lg in rows)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        if not chunk:
            raise ConnectionError(f"worker closed the connection after {len(out)} of {n} bytes")
        out += chunk
    return out


def recv_frame(sock: socket.socket) -> bytes:
    (n,) = struct.unpack("<I", recv_exact(sock, 4))
    return recv_exact(sock, n)


# ---------------------------------------------------------------------------------------------
# A model's SETUP content


@dataclass
class ModelSetup:
    """What SETUP carries, taken from a real .m file; tests change fields before sending it."""

    path: Path
    arch: str
    weight_type: int
    ints: dict
    floats: dict
    rope_inv_freq: list
    tensors: list  # [name, type, rows, cols, offset]
    identity: str
    exchange: int = 0  # 0 f32, 1 q80
    split: list = field(default_factory=list)  # --split weights, one per node ([]: equal shares)
    rope_count: int | None = None  # counts sent in place of the true ones
    tensor_count: int | None = None
    split_count: int | None = None

    @classmethod
    def from_model(cls, path, seq_len: int = 64) -> "ModelSetup":
        from dllama_py.architectures import read_layout
        from dllama_py.engine import model_config

        layout = read_layout(path)
        c = model_config(layout, seq_len)
        ints = {k: int(getattr(c, k)) for k in CONFIG_INTS}
        floats = {k: float(getattr(c, k)) for k in CONFIG_FLOATS}
        tensors = [[t.spec.name, int(t.dtype), t.spec.rows, t.spec.cols, t.offset] for t in layout.tensors]
        return cls(Path(path), c.arch, int(c.weight_type), ints, floats, list(c.rope_inv_freq), tensors,
                   model_identity(path))

    def copy(self, **changes) -> "ModelSetup":
        """A deep copy; config fields (ints or floats) and attributes given by name are replaced."""
        out = ModelSetup(self.path, self.arch, self.weight_type, dict(self.ints), dict(self.floats),
                         list(self.rope_inv_freq), [list(t) for t in self.tensors], self.identity, self.exchange,
                         list(self.split), self.rope_count, self.tensor_count, self.split_count)
        for k, v in changes.items():
            if k in out.ints:
                out.ints[k] = v
            elif k in out.floats:
                out.floats[k] = v
            else:
                setattr(out, k, v)
        return out

    def payload(self) -> bytes:
        out = u8(SETUP) + string(self.identity) + u8(self.exchange)
        out += u32(len(self.split) if self.split_count is None else self.split_count)
        out += b"".join(f32(w) for w in self.split)
        out += string(self.arch) + i32(self.weight_type)
        for name, kind in CONFIG_FIELDS:
            if kind == "i":
                out += i32(self.ints[name])
            elif kind == "f":
                out += f32(self.floats[name])
            else:
                rope_count = len(self.rope_inv_freq) if self.rope_count is None else self.rope_count
                out += u32(rope_count) + b"".join(f32(f) for f in self.rope_inv_freq)
        out += u32(len(self.tensors) if self.tensor_count is None else self.tensor_count)
        for name, dtype, rows, cols, offset in self.tensors:
            out += string(name) + i32(dtype) + u64(rows) + u64(cols) + u64(offset)
        return out


def model_identity(path) -> str:
    """SHA-256 of the .m header and of 64 blocks of 4 KiB spread over the rest, plus the file size (what
    a worker with --model checks, and what keys its cache)."""
    data = Path(path).read_bytes()
    (header_size,) = struct.unpack("<i", data[4:8])
    h = hashlib.sha256(data[:header_size])
    span = len(data) - header_size
    for i in range(64 if span else 0):
        at = header_size + span // 64 * i
        h.update(data[at:at + 4096])
    return h.hexdigest() + f"-{len(data)}"


BYTES_PER_BLOCK = {0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 34)}  # type -> (values, bytes)


def slice_bytes(data: bytes, setup: ModelSetup, name: str, r0: int, r1: int, c0: int, c1: int) -> bytes:
    t = next(t for t in setup.tensors if t[0] == name)
    _, dtype, rows, cols, offset = t
    per, nb = BYTES_PER_BLOCK[dtype]
    row_bytes = cols // per * nb
    b0, b1 = c0 // per * nb, c1 // per * nb
    table = np.frombuffer(data, dtype=np.uint8, count=rows * row_bytes, offset=offset).reshape(rows, row_bytes)
    return table[r0:r1, b0:b1].tobytes()


# ---------------------------------------------------------------------------------------------
# The root's side of a session, one frame at a time


class FakeRoot:
    """One connection to a worker, driven by hand. Methods send what a root sends; `raw` anything."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0):
        self.port = port
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.settimeout(timeout)

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def raw(self, data: bytes):
        self.sock.sendall(data)

    def handshake(self, secret: str = "", version: int = VERSION, role: int = ROLE_ROOT):
        self.raw(MAGIC + u32(version) + u32(role))
        welcome = recv_exact(self.sock, 45)
        assert welcome[:8] == MAGIC, welcome
        status = welcome[12]
        if status != 0:
            raise ConnectionError(f"handshake status {status}")
        challenge = welcome[13:45]
        nonce = os.urandom(32)
        label = b"root" if role == ROLE_ROOT else b"peer"
        mac = hmac.new(secret.encode(), challenge + nonce + label, hashlib.sha256).digest() if secret else bytes(32)
        self.raw(u8(1 if secret else 0) + nonce + mac)
        verdict = recv_exact(self.sock, 33)
        if verdict[0] != 0:
            raise ConnectionError(f"handshake verdict {verdict[0]}")

    def join_payload(self, node: int = 1, n_nodes: int = 2, idle_limit_ms: int = 25000,
                     workers: list | None = None) -> bytes:
        workers = workers if workers is not None else [("127.0.0.1", self.port)]
        out = u8(JOIN) + u32(node) + u32(n_nodes) + u32(idle_limit_ms) + os.urandom(16)
        return out + b"".join(string(h) + u32(p) for h, p in workers)

    def join(self, idle_limit_ms: int = 25000):
        """JOIN as node 1 of 2, BUILD, READY back, START: the mesh is up."""
        self.raw(frame(self.join_payload(idle_limit_ms=idle_limit_ms)) + frame(u8(BUILD)))
        reply = recv_frame(self.sock)
        assert reply[:1] == u8(READY), reply
        self.raw(frame(u8(START)))

    def start_session(self, secret: str = "", idle_limit_ms: int = 25000):
        self.handshake(secret)
        self.join(idle_limit_ms)

    def setup(self, setup: ModelSetup, serve: bool = True) -> str:
        """Sends SETUP and answers the worker's weight requests; returns "ready" or the FAILED reason."""
        self.raw(frame(setup.payload()))
        return self.serve_weights(setup) if serve else ""

    def serve_weights(self, setup: ModelSetup) -> str:
        data = setup.path.read_bytes()
        while True:
            msg = recv_frame(self.sock)
            kind = msg[0]
            if kind == LOADED:
                return "ready"
            if kind == LOAD_FAILED:
                (n,) = struct.unpack("<I", msg[1:5])
                return msg[5:5 + n].decode(errors="replace")
            if kind == PROGRESS:
                continue
            assert kind == REQUEST, msg[:16]
            (n,) = struct.unpack("<I", msg[1:5])
            name = msg[5:5 + n].decode()
            r0, r1, c0, c1 = struct.unpack("<4Q", msg[5 + n:5 + n + 32])
            body = slice_bytes(data, setup, name, r0, r1, c0, c1)
            self.raw(u64(len(body)) + body)

    def closed_by_worker(self, timeout: float) -> bool:
        """True when the worker closes the connection within `timeout` seconds (data it sends is read)."""
        self.sock.settimeout(timeout)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionError, socket.timeout, OSError) as e:
            return not isinstance(e, socket.timeout)
        return False


# ---------------------------------------------------------------------------------------------
# A worker process whose stderr is collected line by line


class WorkerProcess:
    """`python -m dllama_py.cli worker` on a free loopback port (with no slice cache unless args give
    one); `lines` collects its stderr."""

    def __init__(self, *args: str, env: dict | None = None):
        cache = [] if "--cache-dir" in args else ["--no-cache"]
        cmd = [sys.executable, "-m", "dllama_py.cli", "worker", "--host", "127.0.0.1", "--port", "0",
               "--threads", "1", *cache, *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     errors="backslashreplace", env={**os.environ, **(env or {})})
        first = self.proc.stdout.readline()
        if "listening on" not in first:
            self.proc.kill()
            raise RuntimeError(f"worker did not start: {first!r} {self.proc.stderr.read()}")
        self.port = int(first.rsplit(":", 1)[1])
        self.address = f"127.0.0.1:{self.port}"
        self.lines: queue.Queue[str] = queue.Queue()
        self.log: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stderr:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, needle: str, timeout: float = 10.0) -> str:
        """The next stderr line containing `needle` (earlier lines are kept in self.log)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"worker printed no line with {needle!r} within {timeout} s; log: {self.log[-5:]}")
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                continue
            self.log.append(line)
            if needle in line:
                return line

    def saw(self, needle: str, timeout: float = 10.0) -> str:
        """A line containing `needle`, printed before now or within `timeout` seconds."""
        for line in self.log:
            if needle in line:
                return line
        return self.wait_for(needle, timeout)

    def drain(self) -> list[str]:
        out = []
        while True:
            try:
                out.append(self.lines.get_nowait())
            except queue.Empty:
                self.log += out
                return out

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for s in (self.proc.stdout, self.proc.stderr):
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


SESSION_END = "worker: session"  # "worker: session failed: ..." / "worker: session ended"


# ---------------------------------------------------------------------------------------------
# Fuzzing: random and boundary-valued frames after a valid handshake


INT_EDGES = [0, 1, -1, 2, 3, 31, 32, 33, 63, 64, 65, 127, 128, 4096, 65535, 65536, 1 << 20, 1 << 24, 1 << 28,
             (1 << 31) - 1, -(1 << 31), 50_000_000]
U64_EDGES = [0, 1, 2**31, 2**32, 2**32 - 1, 2**63, 2**64 - 1, 2**64 - 100, 1 << 40]
FLOAT_EDGES = [0.0, -0.0, -1.0, 1e-30, 1e30, float("inf"), float("-inf"), float("nan"), 3.4e38]


@dataclass
class FuzzCase:
    """What one case sends after the handshake; `stage` says how far a valid session goes first."""

    stage: str  # "mesh": frames instead of JOIN; "setup": after START; "weights": as a weight reply; "step"
    data: bytes
    note: str
    setup: ModelSetup | None = field(default=None, repr=False)


def _mutated_setup(base: ModelSetup, rng: random.Random) -> tuple[ModelSetup, str]:
    s = base.copy()
    what = rng.choice(["int", "int", "int", "float", "freqs", "tensor", "tensor", "count", "arch", "exchange", "type",
                       "split"])
    if what == "int":
        k = rng.choice(CONFIG_INTS)
        s.ints[k] = rng.choice(INT_EDGES)
        return s, f"{k}={s.ints[k]}"
    if what == "float":
        k = rng.choice(CONFIG_FLOATS)
        s.floats[k] = rng.choice(FLOAT_EDGES)
        return s, f"{k}={s.floats[k]}"
    if what == "freqs":
        n = rng.choice([0, 1, len(s.rope_inv_freq) - 1, len(s.rope_inv_freq) + 1, 1000])
        s.rope_inv_freq = [rng.choice(FLOAT_EDGES + [0.5]) for _ in range(max(n, 0))]
        return s, f"{n} rope frequencies"
    if what == "tensor":
        t = rng.choice(s.tensors)
        i = rng.choice([1, 2, 3, 4])
        t[i] = rng.choice(INT_EDGES if i == 1 else U64_EDGES + INT_EDGES[:12])
        return s, f"tensor {t[0]} field {i} = {t[i]}"
    if what == "count":
        s.tensors = s.tensors[: rng.randrange(len(s.tensors))]
        return s, f"{len(s.tensors)} tensors"
    if what == "arch":
        s.arch = rng.choice(["", "x" * 64, "llama\0", "qwen3_moe", "glm4_moe_lite", "glm"])
        return s, f"arch {s.arch!r}"
    if what == "split":
        n = rng.choice([1, 2, 2, 3, 65])
        s.split = [rng.choice(FLOAT_EDGES + [1.0, 3.0]) for _ in range(n)]
        return s, f"split {s.split}"
    if what == "exchange":
        s.exchange = rng.choice([2, 255])
        return s, f"exchange {s.exchange}"
    s.weight_type = rng.choice([-1, 4, 255])
    return s, f"weight type {s.weight_type}"


def _corrupt(payload: bytes, rng: random.Random) -> tuple[bytes, str]:
    how = rng.choice(["flip", "truncate", "extend", "count"])
    b = bytearray(payload)
    if how == "flip":
        for _ in range(rng.randint(1, 8)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        return bytes(b), "flipped bytes"
    if how == "truncate":
        return bytes(b[: rng.randrange(len(b))]), "truncated"
    if how == "extend":
        return bytes(b) + os.urandom(rng.randint(1, 64)), "trailing bytes"
    i = rng.randrange(max(1, len(b) - 4))
    b[i:i + 4] = u32(rng.choice([0xFFFFFFFF, 0x7FFFFFFF, 1 << 24, 1 << 28]))
    return bytes(b), "a length set huge"


def fuzz_cases(setup: ModelSetup, n: int, seed: int = 0):
    """n cases, deterministic for a seed."""
    rng = random.Random(seed)
    dim = setup.ints["dim"]
    for i in range(n):
        kind = rng.choice(["mesh", "setup", "setup", "setup", "setup-bytes", "weights", "step", "step", "random"])
        if kind == "random":
            data = os.urandom(rng.choice([1, 4, 5, 17, 100, 1000]))
            yield FuzzCase(rng.choice(["mesh", "setup", "step"]), data, f"{len(data)} random bytes")
        elif kind == "mesh":
            node, count = rng.choice(INT_EDGES), rng.choice(INT_EDGES)
            payload = u8(JOIN) + u32(node) + u32(count) + u32(rng.choice(INT_EDGES)) + os.urandom(16)
            payload += b"".join(string(rng.choice([b"127.0.0.1", b"", b"x" * 300])) + u32(rng.choice(INT_EDGES))
                                for _ in range(rng.randint(0, 3)))
            data, note = (payload, f"JOIN node {node} of {count}")
            if rng.random() < 0.3:
                data, note = _corrupt(payload, rng)
            yield FuzzCase("mesh", frame(data), note)
        elif kind == "setup":
            s, note = _mutated_setup(setup, rng)
            yield FuzzCase("setup", frame(s.payload()), note, s)
        elif kind == "setup-bytes":
            data, note = _corrupt(setup.payload(), rng)
            yield FuzzCase("setup", frame(data), "SETUP " + note)
        elif kind == "weights":
            n_bytes = rng.choice(U64_EDGES + [1, 100, 4096])
            yield FuzzCase("weights", u64(n_bytes) + os.urandom(rng.choice([0, 8, 100])), f"weight reply of {n_bytes}")
        else:
            command = rng.choice([FORWARD, FORWARD, FORWARD, MTP, COPY_PREFIX, STOP, 9, -1])
            a, b, c = (rng.choice(INT_EDGES) for _ in range(3))
            rows = [(rng.choice(INT_EDGES[:8]), rng.choice(INT_EDGES), rng.choice([0, 1, 2, -1]))
                    for _ in range(rng.choice([0, 1, 2, 64]))]
            data = u8(rng.choice([STEP, STEP, STEP, PING, 0, 9])) + step_header(command, a, b, c, rows)
            data += os.urandom(rng.choice([0, 4 * dim, 4 * dim * 3]))
            yield FuzzCase("step", data, f"step command {command} ({a}, {b}, {c}), rows {rows[:2]}")


def run_case(worker: WorkerProcess, setup: ModelSetup, case: FuzzCase, timeout: float = 10.0) -> str:
    """Runs one case against a worker; "clean" (it ended the session and logged why), "crash" (the
    process died) or "hang" (no end of session within `timeout` seconds after the root closed)."""
    worker.drain()
    try:
        with FakeRoot(worker.port, timeout=timeout) as root:
            root.handshake()
            if case.stage == "mesh":
                root.raw(case.data)
            else:
                root.join()
                if case.stage == "setup":
                    root.raw(case.data)
                    if case.setup is not None:
                        try:
                            root.serve_weights(case.setup)
                        except Exception:  # noqa: BLE001 - this root cannot answer what it made up; it hangs up
                            pass
                elif case.stage == "weights":
                    root.raw(frame(setup.payload()))
                    recv_frame(root.sock)  # the first REQUEST
                    root.raw(case.data)
                else:
                    assert root.setup(setup) == "ready"
                    root.raw(case.data)
            root.closed_by_worker(0.2)
    except Exception:  # noqa: BLE001 - the worker dropped us early, or this root gave up: what matters is
        pass  # what the worker logged and whether it lives
    if not worker.alive():
        return "crash"
    try:
        worker.wait_for(SESSION_END if case.stage != "mesh" else "refused", timeout)
    except TimeoutError:
        return "crash" if not worker.alive() else "hang"
    return "clean"


def fuzz_worker(model_path, n_cases: int, seed: int = 0, progress=None, check=None,
                check_every: int = 100) -> tuple[dict, list[str]]:
    """Runs n_cases against one worker process (restarted after a crash or hang). Returns the counts
    of "tried", "clean", "crash" and "hang", and a description of every case that was not clean.
    check(worker), if given, runs every check_every cases and at the end (a real root, say)."""
    setup = ModelSetup.from_model(model_path)
    counts = {"tried": 0, "clean": 0, "crash": 0, "hang": 0}
    failures = []
    worker = WorkerProcess()
    try:
        for i, case in enumerate(fuzz_cases(setup, n_cases, seed)):
            result = run_case(worker, setup, case)
            counts["tried"] += 1
            counts[result] += 1
            if result != "clean":
                failures.append(f"case {i} ({case.stage}: {case.note}): {result}, exit code {worker.proc.poll()}")
                worker.close()
                worker = WorkerProcess()
            if progress:
                progress(counts)
            if check and (i + 1 == n_cases or (i + 1) % check_every == 0):
                check(worker)
    finally:
        worker.close()
    return counts, failures


# ---------------------------------------------------------------------------------------------
# The worker's side, for tests of the root


class FakeWorker:
    """Listens like a worker; accept_session() takes one root through the handshake and the mesh (as the
    last node: it accepts the other workers' connections) up to SETUP, then hands the connection to the
    test (`sock`)."""

    def __init__(self):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.sock: socket.socket | None = None

    def _accept(self, timeout: float) -> socket.socket:
        self.listener.settimeout(timeout)
        s, _ = self.listener.accept()
        s.settimeout(timeout)
        hello = recv_exact(s, 16)
        assert hello[:8] == MAGIC
        s.sendall(MAGIC + u32(VERSION) + u8(0) + os.urandom(32))
        proof = recv_exact(s, 65)
        assert proof[0] == 0, "this fake worker has no secret"
        s.sendall(u8(0) + bytes(32))
        return s

    def accept_session(self, timeout: float = 10.0):
        self.sock = self._accept(timeout)
        join = recv_frame(self.sock)
        assert join[0] == JOIN
        node = struct.unpack("<I", join[1:5])[0]
        assert recv_frame(self.sock)[0] == BUILD
        self.peers = []
        for _ in range(node - 1):  # PEER_HELLO from every worker below, answered with PEER_WELCOME
            peer = self._accept(timeout)
            assert recv_frame(peer)[0] == 3
            peer.sendall(frame(u8(4)))
            self.peers.append(peer)
        self.sock.sendall(frame(u8(READY)))
        assert recv_frame(self.sock)[0] == START
        setup = recv_frame(self.sock)
        assert setup[0] == SETUP
        return setup

    def close(self):
        for s in [self.sock, self.listener, *getattr(self, "peers", [])]:
            if s is not None:
                s.close()
