"""Tensor parallelism on one machine: traffic, sync time and tok/s per token for 1, 2, 4... nodes,
over loopback or emulated links, next to what benchmarks/time_model.py predicts.

    python benchmarks/distributed_bench.py /tmp/llama-1b-q40.m
    python benchmarks/distributed_bench.py /tmp/llama-1b-q40.m --nodes 2 4 --exchange f32
    python benchmarks/distributed_bench.py /tmp/llama-1b-q40.m --nodes 1 2 --latency-ms 0 0.1 0.5 --rate-mbit 1000 10000
    python benchmarks/distributed_bench.py /tmp/llama-1b-q40.m --nodes 2 --slow-node 1 --slow-quota 0.5 --split equal auto 2,1

It runs the installed package (`pip install .`); in a development checkout built with cmake, prefix
the commands with PYTHONPATH=src. The workers import the same dllama_py as this script.

For each node count N it starts N-1 `dllama-py worker`s (1 thread each) as subprocesses, runs
`dllama_py.bench.run_bench` on the root with them, stops them, and prints one row: decode and prefill
tokens/s, kB the root sent and received per decoded token, the share of decode time spent in exchanges
(and that time in ms per token), next to the bytes the traffic formula predicts (docs/distributed.md):

    root sent     = 2·L·(N−1)·B  +  (N−1)·(1 + 16 + 12 + 4·dim)   B = dim/32·34 (q80) or 4·dim (f32)
    root received = 2·L·(N−1)·B  +  4·(vocab − vocab_share_of_root)

Networks:
- default: every node on 127.0.0.1 (loopback).
- --latency-ms X.. [--rate-mbit R..]: for each (X, R) the nodes also run behind the link emulator
  (benchmarks/link_emulator.cpp, built here with g++ into build/): one relay port per worker, used by the
  root and by the other workers, so every connection of the mesh crosses it; each direction of each
  connection is a link of X ms one-way latency and R Mbit/s. Before the runs the script measures and
  prints what the emulator really adds (64-byte ping-pong through it against direct) and the rate a bulk
  transfer achieves. The "modelled tok/s" column is the time model fed with the 1-node speed, the
  loopback overhead per exchange at the same node count and the emulator's measured latency.
- --netns (needs root and `ip netns`): worker i runs in its own network namespace `dlbench-wI` at
  10.77.0.(I+1)/24, joined to the default namespace (10.77.0.1/24 on bridge `br-dlbench`) by a veth pair.
  Links then use `tc netem delay X rate R` on both ends of every veth where the kernel has sch_netem (a
  root-worker hop X, a worker-worker hop 2X), else the link emulator on 10.77.0.1. Namespaces, veths and
  the bridge are removed at the end, and leftovers of an earlier run at the start. Only 10.77.0.0/24
  addresses created here and 127.0.0.1 are ever used.

Uneven splits: --split equal auto 2,1 ... runs each multi-node row once per split (weights apply to the
node counts they have one weight per node for; `auto` is --split auto). --slow-node K --slow-quota Q
slows worker K down on purpose: it runs in a cgroup (v1 cpu controller, needs root) that lets it use Q of
one CPU (in 10 ms periods), from before its first probe, so --split auto's measurement sees it too.

On a machine with fewer cores than nodes × threads, tokens/s say nothing about scaling; the bytes per
token and the sync time with against without the emulated links are what to read.
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUBNET = "10.77.0"
BRIDGE = "br-dlbench"
NS_PREFIX = "dlbench-w"
VETH_HOST, VETH_NS = "dlb-h", "dlb-n"  # + worker index; names stay under 15 characters
MAX_WORKERS = 60
CPU_CGROUP = Path("/sys/fs/cgroup/cpu")
SLOW_GROUP = CPU_CGROUP / "dlbench-slow"
SLOW_PERIOD_US = 10_000  # short periods: the slowed worker stalls a step for at most a few ms


# --- the traffic formula ----------------------------------------------------------------------

def predicted_bytes(dim: int, n_layers: int, vocab: int, nodes: int, exchange: str,
                    split: list[float] | None = None) -> tuple[int, int]:
    """(sent, received) by the root per decoded token; split: the nodes' weights (None: equal)."""
    if nodes < 2:
        return 0, 0
    from time_model import partial_bytes

    from dllama_py import _core

    b = partial_bytes(dim, exchange)
    reduce = 2 * n_layers * (nodes - 1) * b
    begin, end = _core.node_share(vocab, 0, nodes, split or [])
    root_share = end - begin
    return reduce + (nodes - 1) * (1 + 16 + 12 + 4 * dim), reduce + 4 * (vocab - root_share)  # STEP, header, row, embedding


# --- shell helpers ----------------------------------------------------------------------------

def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(args, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def netem_available() -> bool:
    """Whether this kernel has sch_netem (tried on a throwaway veth pair of our own)."""
    a, b = VETH_HOST + "probe", VETH_NS + "probe"
    sh("ip", "link", "del", a, check=False)
    if sh("ip", "link", "add", a, "type", "veth", "peer", "name", b, check=False).returncode != 0:
        return False
    try:
        return sh("tc", "qdisc", "add", "dev", a, "root", "netem", "delay", "1ms", check=False).returncode == 0
    finally:
        sh("ip", "link", "del", a, check=False)


class NetnsNetwork:
    """The bridge, namespaces and veth pairs of one run; a context manager that always cleans up."""

    def __init__(self, n_workers: int, netem: tuple[float, float] | None):
        """netem: (one-way latency ms, rate Mbit/s or 0) on both ends of every veth, or None."""
        if n_workers > MAX_WORKERS:
            raise ValueError(f"at most {MAX_WORKERS} workers in {SUBNET}.0/24")
        self.n, self.netem = n_workers, netem

    @staticmethod
    def cleanup():
        """Removes whatever an earlier run left behind (only names with our prefixes)."""
        listed = sh("ip", "netns", "list", check=False).stdout.split()
        for name in listed:
            if name.startswith(NS_PREFIX) and name[len(NS_PREFIX):].isdigit():
                sh("ip", "netns", "del", name, check=False)
        links = sh("ip", "-o", "link", "show", check=False).stdout
        for line in links.splitlines():
            parts = line.split(":")
            if len(parts) < 2:
                continue
            name = parts[1].strip().split("@")[0]
            if name == BRIDGE or (name.startswith(VETH_HOST) and name[len(VETH_HOST):].isdigit()):
                sh("ip", "link", "del", name, check=False)

    def worker_ns(self, i: int) -> str:
        return f"{NS_PREFIX}{i}"

    def worker_ip(self, i: int) -> str:
        return f"{SUBNET}.{i + 1}"

    def __enter__(self):
        self.cleanup()
        try:
            sh("ip", "link", "add", BRIDGE, "type", "bridge")
            sh("ip", "addr", "add", f"{SUBNET}.1/24", "dev", BRIDGE)
            sh("ip", "link", "set", BRIDGE, "up")
            for i in range(1, self.n + 1):
                ns, host, peer = self.worker_ns(i), f"{VETH_HOST}{i}", f"{VETH_NS}{i}"
                sh("ip", "netns", "add", ns)
                sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
                sh("ip", "link", "set", peer, "netns", ns)
                sh("ip", "link", "set", host, "master", BRIDGE)
                sh("ip", "link", "set", host, "up")
                sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
                sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{self.worker_ip(i)}/24", "dev", peer)
                sh("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
                if self.netem:
                    spec = ["netem", "delay", f"{self.netem[0]}ms"] + (["rate", f"{self.netem[1]}mbit"] if self.netem[1] else [])
                    sh("tc", "qdisc", "add", "dev", host, "root", *spec)
                    sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", peer, "root", *spec)
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        self.cleanup()


# --- a worker slowed on purpose ---------------------------------------------------------------

class SlowedCpu:
    """A cgroup v1 cpu group whose processes get `quota` of one CPU; a context manager that removes it
    (its processes must have exited by then)."""

    def __init__(self, quota: float):
        self.quota = quota

    def __enter__(self):
        SLOW_GROUP.mkdir(exist_ok=True)
        (SLOW_GROUP / "cpu.cfs_period_us").write_text(str(SLOW_PERIOD_US))
        (SLOW_GROUP / "cpu.cfs_quota_us").write_text(str(int(self.quota * SLOW_PERIOD_US)))
        return self

    def add(self, pid: int):
        (SLOW_GROUP / "cgroup.procs").write_text(str(pid))  # every thread of the process, and later ones

    def __exit__(self, *exc):
        for _ in range(50):  # the group can be removed once its last process is gone
            try:
                SLOW_GROUP.rmdir()
                return
            except OSError:
                time.sleep(0.1)
        print(f"note: could not remove {SLOW_GROUP} (a process is still in it)", file=sys.stderr)


# --- the link emulator (benchmarks/link_emulator.cpp) ------------------------------------------

EMULATOR_SRC = Path(__file__).with_name("link_emulator.cpp")


def build_link_emulator() -> Path:
    """Compiles link_emulator.cpp with g++ into build/ (again only when the source is newer)."""
    out = Path(__file__).resolve().parent.parent / "build" / "link_emulator"
    if not out.exists() or out.stat().st_mtime < EMULATOR_SRC.stat().st_mtime:
        out.parent.mkdir(parents=True, exist_ok=True)
        sh("g++", "-O2", "-std=c++17", "-pthread", "-o", str(out), str(EMULATOR_SRC))
    return out


class Relay:
    """A link_emulator child relaying listen_host:<port i> -> targets[i]: one-way latency and a rate limit
    on each direction of each connection."""

    def __init__(self, listen_host: str, targets: list[str], latency_ms: float, rate_mbit: float):
        self.proc = subprocess.Popen([str(build_link_emulator()), str(latency_ms * 1000), str(rate_mbit),
                                      listen_host, *targets], stdout=subprocess.PIPE, text=True)
        try:
            self.addresses = _readline(self.proc, 20.0, "link emulator").split()[1:]
        except BaseException:
            self.stop()
            raise

    def stop(self):
        _stop(self.proc)


def _echo_server(sock: socket.socket):
    """Echoes each connection's bytes back (ping-pong) or, for a connection that starts with b"S", reads
    a u64 count and that many bytes, then answers one byte (throughput)."""
    import threading

    def serve(c: socket.socket):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with c:
            first = c.recv(1)
            if first == b"S":
                count = int.from_bytes(_recv_exact(c, 8), "little")
                while count > 0:
                    count -= len(c.recv(min(count, 1 << 20)))
                c.sendall(b"!")
                return
            data = first
            while data:
                c.sendall(data)
                data = c.recv(1 << 16)

    def accept():
        while True:
            try:
                c, _ = sock.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()


def _recv_exact(c: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        part = c.recv(n - len(buf))
        if not part:
            raise ConnectionError("closed")
        buf += part
    return buf


def _ping_rtts(address: str, rounds: int, size: int = 64) -> list[float]:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port))) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg, rtts = b"p" * size, []
        for _ in range(rounds):
            t0 = time.perf_counter()
            c.sendall(msg)
            _recv_exact(c, size)
            rtts.append(time.perf_counter() - t0)
    return rtts


def _send_seconds(address: str, nbytes: int) -> float:
    """Seconds from the first byte sent until the sink acknowledged the last one."""
    host, port = address.rsplit(":", 1)
    chunk = b"x" * (1 << 16)
    with socket.create_connection((host, int(port))) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.perf_counter()
        c.sendall(b"S" + nbytes.to_bytes(8, "little"))
        left = nbytes
        while left > 0:
            left -= c.send(chunk[:min(left, len(chunk))])
        _recv_exact(c, 1)
        return time.perf_counter() - t0


def calibrate_link(host: str, latency_ms: float, rate_mbit: float, rounds: int = 300) -> dict:
    """What the emulator really adds: the median round trip of 64-byte ping-pongs through it minus the
    direct one (to be 2 x latency), and the rate a bulk one-way transfer achieves through it."""
    with socket.socket() as server:
        server.bind((host, 0))
        server.listen(16)
        _echo_server(server)
        direct = f"{host}:{server.getsockname()[1]}"
        relay = Relay(host, [direct], latency_ms, rate_mbit)
        try:
            d = statistics.median(_ping_rtts(direct, rounds))
            r = _ping_rtts(relay.addresses[0], rounds)
            via = statistics.median(r)
            result = dict(latency_ms=latency_ms, rate_mbit=rate_mbit, direct_rtt_us=d * 1e6,
                          added_rtt_us=(via - d) * 1e6, added_rtt_p90_us=(sorted(r)[int(0.9 * len(r))] - d) * 1e6,
                          throughput_mbit=None)
            if rate_mbit:
                nbytes = int(min(rate_mbit * 1e6 / 8 * 0.2, 64e6))  # ~0.2 s of traffic at the set rate
                t = _send_seconds(relay.addresses[0], nbytes) - via  # the last bits' latency and the ack
                result["throughput_mbit"] = 8 * nbytes / t / 1e6
                result["direct_mbit"] = 8 * nbytes / (_send_seconds(direct, nbytes) - d) / 1e6
            return result
        finally:
            relay.stop()


def print_calibration(c: dict):
    rate = f"{c['rate_mbit']:g} Mbit/s" if c["rate_mbit"] else "no rate limit"
    got = (f", achieved {c['throughput_mbit']:.0f} Mbit/s (direct, without it: {c['direct_mbit']:.0f})"
           if c["throughput_mbit"] else "")
    print(f"link emulator at {c['latency_ms']:g} ms one-way, {rate}: adds {c['added_rtt_us']:.0f} us round trip "
          f"(set {2000 * c['latency_ms']:.0f}; p90 {c['added_rtt_p90_us']:.0f}; direct {c['direct_rtt_us']:.0f} us)"
          f"{got}", flush=True)


# --- workers ----------------------------------------------------------------------------------

def _readline(proc: subprocess.Popen, timeout: float, what: str) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"{what} did not report within {timeout:.0f} s")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{what} exited (code {proc.wait()})")
    return line.strip()


def _stop(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_worker(host: str, netns: str | None, log_path: Path, model: str | None, threads: int,
                 slowed: SlowedCpu | None = None):
    cmd = [sys.executable, "-m", "dllama_py.cli", "worker", "--host", host, "--port", "0", "--threads", str(threads)]
    if model:
        cmd += ["--model", model]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    env = dict(os.environ)  # the workers import the dllama_py this process imports (the installed one)
    env.pop("DLLAMA_SECRET", None)
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
    log.close()
    if slowed:  # before it listens, so before any probe measures it
        slowed.add(proc.pid)
    line = _readline(proc, 60.0, f"worker on {host}")
    prefix = "dllama-py worker listening on "
    if not line.startswith(prefix):
        _stop(proc)
        raise RuntimeError(f"unexpected first line from the worker: {line!r}")
    port = int(line[len(prefix):].rsplit(":", 1)[1])
    return proc, f"{host}:{port}"


# --- one measurement --------------------------------------------------------------------------

def measure(model: str, nodes: int, exchange: str, args, layout, link: tuple[float, float] | None,
            split: str | None = None) -> dict:
    """One run of `nodes` nodes; link = (one-way latency ms, rate Mbit/s) puts the link emulator between
    every pair of nodes (None: plain loopback or, with --netns, the bridge); split: as --split (None:
    equal)."""
    from dllama_py.bench import run_bench

    workers, procs, relay, net = [], [], None, None
    logs = Path(tempfile.mkdtemp(prefix="dlbench-"))
    mode = "loopback"
    try:
        if nodes > 1 and args.netns:
            use_netem = link is not None and link != (0, 0) and args.netem
            net = NetnsNetwork(nodes - 1, link if use_netem else None).__enter__()
            for i in range(1, nodes):
                proc, addr = start_worker(net.worker_ip(i), net.worker_ns(i), logs / f"worker{i}.log",
                                          args.worker_model, args.threads)
                procs.append(proc)
                workers.append(addr)
            mode = "netns, " + ("netem" if use_netem else "emulator" if link else "bridge")
            if link and not use_netem:
                relay = Relay(f"{SUBNET}.1", workers, *link)
                workers = relay.addresses
        else:
            for i in range(1, nodes):
                proc, addr = start_worker("127.0.0.1", None, logs / f"worker{i}.log", args.worker_model, args.threads,
                                          args.slowed if i == args.slow_node else None)
                procs.append(proc)
                workers.append(addr)
            if nodes > 1 and link:
                relay = Relay("127.0.0.1", workers, *link)
                workers = relay.addresses
                mode = "emulator"
        if link and nodes > 1:
            mode += f" {link[0]:g} ms, " + (f"{link[1]:g} Mbit/s" if link[1] else "no rate limit")
        r = run_bench(model, threads=args.threads, prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                      bandwidth_gbps=1.0, max_seq_len=args.prompt_tokens + args.gen_tokens + 16, print_table=False,
                      workers=workers or None, exchange=exchange, split=split)
    except BaseException:
        for i in range(1, nodes):
            log = logs / f"worker{i}.log"
            if log.exists() and log.read_text().strip():
                print(f"--- worker {i} log ---\n{log.read_text()[-2000:]}", file=sys.stderr)
        raise
    finally:
        for p in procs:
            _stop(p)
        if relay:
            relay.stop()
        if net:
            net.__exit__(None, None, None)
    p = layout.params
    sent, received = predicted_bytes(p["dim"], p["n_layers"], p["vocab_size"], nodes, exchange, r.split)
    weights = ",".join(f"{w:g}" for w in r.split) if r.split else "equal"
    return dict(nodes=nodes, exchange=exchange if nodes > 1 else "-", network=mode if nodes > 1 else "-", link=link,
                split="-" if nodes == 1 else f"auto: {weights}" if split == "auto" else weights,
                decode=r.decode_tokens_per_s, prefill=r.prefill_tokens_per_s, weight_bytes=r.weight_bytes_per_token,
                sent=r.net_bytes_sent_per_token, received=r.net_bytes_received_per_token,
                sync=r.sync_share, sync_ms=r.sync_share / r.decode_tokens_per_s * 1e3,
                pred_sent=sent, pred_received=received)


def add_model(rows: list[dict], calibration: dict, layout):
    """Adds the time model's tok/s (benchmarks/time_model.py) to each row: compute = the 1-node token time
    scaled by the root's share of the weight bytes; overhead per exchange = what loopback at the same node
    count spent beyond that compute; latency = what the emulator was measured to add (half its added
    round trip), so its own cost is counted; one link per pair of nodes, as the emulator has."""
    from time_model import Link, token_seconds

    p = layout.params
    one = next((r for r in rows if r["nodes"] == 1), None)
    if one is None:
        return
    for r in rows:
        exchanges = 2 * p["n_layers"] + 2
        compute = one["weight_bytes"] and r["weight_bytes"] / one["weight_bytes"] / one["decode"]
        loop = next((x for x in rows if x["nodes"] == r["nodes"] and x["link"] is None
                     and x["exchange"] == r["exchange"] and x["split"] == r["split"]), None)
        if r["nodes"] == 1 or loop is None:
            continue
        overhead = max(0.0, (1 / loop["decode"] - compute) / exchanges)
        r["overhead_us"] = overhead * 1e6
        if r["link"] is None:
            continue
        c = calibration.get(r["link"])  # none under netem: take the set latency
        latency = max(0.0, c["added_rtt_us"]) / 2e6 if c else r["link"][0] / 1e3
        link = Link(latency, r["link"][1] * 1e6, shared_nic=False)
        t = token_seconds(compute, r["nodes"], p["n_layers"], p["dim"], p["vocab_size"], r["exchange"], link, overhead)
        r["model"] = 1 / t["total"]


def print_table(rows: list[dict], with_split: bool = False):
    head = ["nodes", "exchange", "network", "decode tok/s", "modelled tok/s", "prefill tok/s", "sent kB/tok",
            "recv kB/tok", "sync", "sync ms/tok", "overhead us/exchange", "predicted sent/recv kB"]
    body = [[str(r["nodes"]), r["exchange"], r["network"], f"{r['decode']:.2f}",
             f"{r['model']:.2f}" if "model" in r else "", f"{r['prefill']:.1f}",
             f"{r['sent'] / 1e3:.1f}", f"{r['received'] / 1e3:.1f}", f"{r['sync']:.0%}", f"{r['sync_ms']:.1f}",
             f"{r['overhead_us']:.0f}" if "overhead_us" in r else "",
             f"{r['pred_sent'] / 1e3:.1f} / {r['pred_received'] / 1e3:.1f}"] for r in rows]
    if with_split:
        head.insert(3, "split")
        for b, r in zip(body, rows):
            b.insert(3, r["split"])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for b in body:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="the .m model file")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4], help="node counts (default 1 2 4)")
    ap.add_argument("--exchange", choices=["q80", "f32"], nargs="+", default=["q80"],
                    help="partial-sum encoding(s) (default q80)")
    ap.add_argument("--threads", type=int, default=1, help="threads per node (default 1)")
    ap.add_argument("--prompt-tokens", type=int, default=16, help="prefill length (default 16)")
    ap.add_argument("--gen-tokens", type=int, default=24, help="decode steps (default 24)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds over all rows; the table shows medians (default 1)")
    ap.add_argument("--latency-ms", type=float, nargs="+", default=None,
                    help="one-way latencies (ms) of emulated links between the nodes, e.g. 0 0.1 0.5")
    ap.add_argument("--rate-mbit", type=float, nargs="+", default=[0.0],
                    help="with --latency-ms: link rates in Mbit/s, e.g. 1000 10000 (default 0: no limit)")
    ap.add_argument("--netns", action="store_true",
                    help="workers in network namespaces behind a bridge (needs root); links via netem if the "
                         "kernel has it, else via the link emulator on the bridge")
    ap.add_argument("--no-netem", dest="netem", action="store_false",
                    help="with --netns: use the link emulator even where netem exists")
    ap.add_argument("--worker-model", default=None,
                    help="workers load their share from this local copy instead of from the root")
    ap.add_argument("--split", nargs="+", default=None, metavar="equal|auto|W,W,...",
                    help="run each multi-node row with each of these splits (weights: for the node count that "
                         "has one weight per node)")
    ap.add_argument("--slow-node", type=int, default=None, metavar="K",
                    help="slow worker node K (1..N-1) down on purpose: a cgroup CPU quota (needs root)")
    ap.add_argument("--slow-quota", type=float, default=0.5, metavar="Q",
                    help="with --slow-node: the share of one CPU it gets (default 0.5)")
    args = ap.parse_args(argv)
    try:
        from dllama_py import _core  # noqa: F401
    except ImportError as e:
        ap.error(f"dllama_py with its compiled core is not importable ({e}): `pip install .` the repository, "
                 "or build it (README) and run with PYTHONPATH=src")
    if not 1 <= args.repeats <= 9:
        ap.error("--repeats: 1..9")
    if args.gen_tokens < 1 or args.gen_tokens > 256 or args.prompt_tokens < 1 or args.prompt_tokens > 512:
        ap.error("keep runs short: 1..256 decode tokens, 1..512 prompt tokens")
    if any(not 0 <= x <= 1000 for x in args.latency_ms or []) or any(not 0 <= x <= 1e5 for x in args.rate_mbit):
        ap.error("--latency-ms: 0..1000, --rate-mbit: 0..100000")
    if args.slow_node is not None:
        if not 0.01 <= args.slow_quota <= 1 or args.slow_node < 1 or args.netns:
            ap.error("--slow-node: a worker node 1..N-1, --slow-quota 0.01..1, not with --netns")
        if not (CPU_CGROUP / "cgroup.procs").exists() or os.geteuid() != 0:
            ap.error(f"--slow-node needs root and the cgroup v1 cpu controller at {CPU_CGROUP}")
    splits = [None if s == "equal" else s for s in args.split or ["equal"]]
    if args.netns:
        if os.geteuid() != 0:
            ap.error("--netns needs root (ip netns, tc)")
        if sh("ip", "netns", "list", check=False).returncode != 0:
            ap.error("`ip netns` does not work here")
        if args.latency_ms and args.netem and not netem_available():
            print("note: this kernel has no sch_netem; using the link emulator instead", file=sys.stderr)
            args.netem = False

    from dllama_py.architectures import read_layout

    layout = read_layout(args.model)
    p = layout.params
    print(f"{args.model}: {layout.arch.builder}, dim {p['dim']}, {p['n_layers']} layers, vocab {p['vocab_size']}, "
          f"{args.threads} thread(s) per node, {args.prompt_tokens}-token prompt, {args.gen_tokens} decode steps, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs", flush=True)
    links = [(lat, rate) for lat in args.latency_ms for rate in args.rate_mbit] if args.latency_ms else []
    calibration = {}
    if links and not (args.netns and args.netem):
        for link in links:
            calibration[link] = calibrate_link("127.0.0.1", *link)
            print_calibration(calibration[link])
    configs = [(exchange, nodes, link, split) for exchange in args.exchange for nodes in args.nodes
               for link in [None] + (links if nodes > 1 else []) for split in (splits if nodes > 1 else [None])
               if split in (None, "auto") or len(split.split(",")) == nodes]
    configs = [c for i, c in enumerate(configs) if c[1] > 1 or not any(x[1] == 1 for x in configs[:i])]
    runs: dict = {c: [] for c in configs}
    args.slowed = SlowedCpu(args.slow_quota) if args.slow_node is not None else None
    if args.slowed:
        print(f"worker node {args.slow_node} slowed to {args.slow_quota:g} of one CPU (cgroup {SLOW_GROUP})", flush=True)
        args.slowed.__enter__()
    try:
        # Repeats are rounds over every configuration, so a load that comes and goes hits them alike.
        for _ in range(args.repeats):
            for c in configs:
                exchange, nodes, link, split = c
                r = measure(args.model, nodes, exchange, args, layout, link, split)
                runs[c].append(r)
                print(f"  {nodes} node(s) {exchange} {r['network']} split {r['split']}: {r['decode']:.2f} tok/s, "
                      f"sent {r['sent'] / 1e3:.1f} kB/tok, sync {r['sync']:.0%}", file=sys.stderr, flush=True)
    finally:
        if args.netns:
            NetnsNetwork.cleanup()
        if args.slowed:
            args.slowed.__exit__(None, None, None)
    rows = []
    for c in configs:
        r = dict(runs[c][0])
        for key in ("decode", "prefill", "sent", "received", "sync", "sync_ms"):
            r[key] = statistics.median(x[key] for x in runs[c])
        r["split"] = " / ".join(dict.fromkeys(x["split"] for x in runs[c]))  # auto may choose anew each round
        rows.append(r)
    add_model(rows, calibration, layout)
    print_table(rows, with_split=args.split is not None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
