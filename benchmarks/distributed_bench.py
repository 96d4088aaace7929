"""Tensor parallelism on one machine: traffic and sync time per token for 1, 2, 4... nodes.

    python benchmarks/distributed_bench.py /tmp/llama-1b-q40.m
    python benchmarks/distributed_bench.py /tmp/llama-1b-q40.m --nodes 2 4 --exchange f32
    python benchmarks/distributed_bench.py /tmp/llama-1b-q40.m --nodes 2 4 --netns-delay-ms 1

It runs the installed package (`pip install .`); in a development checkout built with cmake, prefix
the commands with PYTHONPATH=src. The workers import the same dllama_py as this script.

For each node count N it starts N-1 `dllama-py worker`s (1 thread each) as subprocesses, runs
`dllama_py.bench.run_bench` on the root with them, stops them, and prints one row: decode and prefill
tokens/s, kB the root sent and received per decoded token, the share of decode time spent in exchanges
(and that time in ms per token), next to the bytes the traffic formula predicts (docs/distributed.md):

    root sent     = 2·L·(N−1)·B  +  (N−1)·(16 + 12 + 4·dim)    B = dim/32·34 (q80) or 4·dim (f32)
    root received = 2·L·(N−1)·B  +  4·(vocab − vocab_share_of_root)

Networks:
- default: every node on 127.0.0.1 (loopback).
- --netns-delay-ms X (needs root and `ip netns`): worker i runs in its own network namespace `dlbench-wI`
  at 10.77.0.(I+1)/24, joined to the default namespace (10.77.0.1/24 on bridge `br-dlbench`) by a veth
  pair; the root connects over the bridge and the workers reach each other over it. With X > 0 each veth
  end gets `tc qdisc ... netem delay Xms`, so a root-worker round trip costs 2X ms (and a worker-worker
  one 4X ms: two veths each way). Kernels without sch_netem get a user-space relay instead (see
  --relay): one per worker on 10.77.0.1, delaying every chunk by X ms each way, so every hop costs 2X ms
  round trip. Namespaces, veths and the bridge are removed at the end, and leftovers of an earlier run at
  the start. Only 10.77.0.0/24 addresses created here and 127.0.0.1 are ever used.

On a machine with fewer cores than nodes × threads, tokens/s say nothing about scaling; the bytes per
token and the sync time at X ms against 0 ms are what to read.
"""

from __future__ import annotations

import argparse
import asyncio
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



# --- the traffic formula ----------------------------------------------------------------------

def predicted_bytes(dim: int, n_layers: int, vocab: int, nodes: int, exchange: str) -> tuple[int, int]:
    """(sent, received) by the root per decoded token."""
    if nodes < 2:
        return 0, 0
    b = dim // 32 * 34 if exchange == "q80" else 4 * dim
    reduce = 2 * n_layers * (nodes - 1) * b
    root_share = vocab * 1 // nodes  # Partition{0, N}.share(vocab).size()
    return reduce + (nodes - 1) * (16 + 12 + 4 * dim), reduce + 4 * (vocab - root_share)  # header, row, embedding


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

    def __init__(self, n_workers: int, delay_ms: float, use_netem: bool):
        if n_workers > MAX_WORKERS:
            raise ValueError(f"at most {MAX_WORKERS} workers in {SUBNET}.0/24")
        self.n, self.delay_ms, self.use_netem = n_workers, delay_ms, use_netem

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
                if self.use_netem:
                    delay = f"{self.delay_ms}ms"
                    sh("tc", "qdisc", "add", "dev", host, "root", "netem", "delay", delay)
                    sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", peer, "root", "netem", "delay", delay)
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(self, *exc):
        self.cleanup()


# --- a user-space delay relay (when the kernel has no netem) ----------------------------------

async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float):
    """Copies reader to writer, each chunk delivered delay_s after it arrived, in order."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    async def deliver():
        while True:
            due, data = await queue.get()
            if data is None:
                break
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    task = asyncio.create_task(deliver())
    try:
        while True:
            data = await reader.read(1 << 16)
            if not data:
                break
            queue.put_nowait((loop.time() + delay_s, data))
    except (ConnectionError, OSError):
        pass
    queue.put_nowait((0.0, None))
    try:
        await task
    except (ConnectionError, OSError):
        pass


async def _relay_main(listen_host: str, targets: list[str], delay_ms: float):
    delay_s = delay_ms / 1000.0
    servers = []
    for target in targets:
        t_host, t_port = target.rsplit(":", 1)

        async def handle(r, w, t_host=t_host, t_port=int(t_port)):
            try:
                ur, uw = await asyncio.open_connection(t_host, t_port)
            except OSError:
                w.close()
                return
            for s in (w.get_extra_info("socket"), uw.get_extra_info("socket")):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.gather(_pump(r, uw, delay_s), _pump(ur, w, delay_s))

        server = await asyncio.start_server(handle, listen_host, 0)
        servers.append(server)
    # One line: a buffered reader may take several lines at once, and select() would not see the rest.
    print("relay " + " ".join(f"{listen_host}:{s.sockets[0].getsockname()[1]}" for s in servers), flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


class Relay:
    """A child process relaying listen_host:<port i> -> targets[i] with a delay each way."""

    def __init__(self, listen_host: str, targets: list[str], delay_ms: float):
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--relay-child", listen_host, str(delay_ms), *targets],
            stdout=subprocess.PIPE, text=True)
        try:
            self.addresses = _readline(self.proc, 20.0, "relay").split()[1:]
        except BaseException:
            self.stop()
            raise

    def stop(self):
        _stop(self.proc)


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


def start_worker(host: str, netns: str | None, log_path: Path, model: str | None, threads: int):
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
    line = _readline(proc, 60.0, f"worker on {host}")
    prefix = "dllama-py worker listening on "
    if not line.startswith(prefix):
        _stop(proc)
        raise RuntimeError(f"unexpected first line from the worker: {line!r}")
    port = int(line[len(prefix):].rsplit(":", 1)[1])
    return proc, f"{host}:{port}"


# --- one measurement --------------------------------------------------------------------------

def measure(model: str, nodes: int, exchange: str, args, layout) -> dict:
    from dllama_py.bench import run_bench

    workers, procs, relay, net = [], [], None, None
    logs = Path(tempfile.mkdtemp(prefix="dlbench-"))
    mode = "loopback"
    try:
        if nodes > 1 and args.netns_delay_ms is not None:
            delay = args.netns_delay_ms
            use_netem = delay > 0 and not args.relay and args.netem
            use_relay = args.relay or (delay > 0 and not use_netem)
            net = NetnsNetwork(nodes - 1, delay, use_netem).__enter__()
            for i in range(1, nodes):
                proc, addr = start_worker(net.worker_ip(i), net.worker_ns(i), logs / f"worker{i}.log",
                                          args.worker_model, args.threads)
                procs.append(proc)
                workers.append(addr)
            mode = f"netns, {'netem' if use_netem else 'relay' if use_relay else 'bridge'} {delay:g} ms"
            if use_relay:
                relay = Relay(f"{SUBNET}.1", workers, delay)
                workers = relay.addresses
        else:
            for i in range(1, nodes):
                proc, addr = start_worker("127.0.0.1", None, logs / f"worker{i}.log", args.worker_model, args.threads)
                procs.append(proc)
                workers.append(addr)
        r = run_bench(model, threads=args.threads, prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens,
                      bandwidth_gbps=1.0, max_seq_len=args.prompt_tokens + args.gen_tokens + 16, print_table=False,
                      workers=workers or None, exchange=exchange)
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
    sent, received = predicted_bytes(p["dim"], p["n_layers"], p["vocab_size"], nodes, exchange)
    return dict(nodes=nodes, exchange=exchange if nodes > 1 else "-", network=mode if nodes > 1 else "-",
                decode=r.decode_tokens_per_s, prefill=r.prefill_tokens_per_s,
                sent=r.net_bytes_sent_per_token, received=r.net_bytes_received_per_token,
                sync=r.sync_share, sync_ms=r.sync_share / r.decode_tokens_per_s * 1e3,
                pred_sent=sent, pred_received=received)


def print_table(rows: list[dict]):
    head = ["nodes", "exchange", "network", "decode tok/s", "prefill tok/s", "sent kB/tok", "recv kB/tok",
            "sync", "sync ms/tok", "predicted sent/recv kB"]
    body = [[str(r["nodes"]), r["exchange"], r["network"], f"{r['decode']:.2f}", f"{r['prefill']:.1f}",
             f"{r['sent'] / 1e3:.1f}", f"{r['received'] / 1e3:.1f}", f"{r['sync']:.0%}", f"{r['sync_ms']:.1f}",
             f"{r['pred_sent'] / 1e3:.1f} / {r['pred_received'] / 1e3:.1f}"] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for b in body:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(b, widths)) + " |")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--relay-child"]:
        asyncio.run(_relay_main(argv[1], argv[3:], float(argv[2])))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="the .m model file")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2, 4], help="node counts (default 1 2 4)")
    ap.add_argument("--exchange", choices=["q80", "f32"], nargs="+", default=["q80"],
                    help="partial-sum encoding(s) (default q80)")
    ap.add_argument("--threads", type=int, default=1, help="threads per node (default 1)")
    ap.add_argument("--prompt-tokens", type=int, default=16, help="prefill length (default 16)")
    ap.add_argument("--gen-tokens", type=int, default=24, help="decode steps (default 24)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per row; the table shows medians (default 1)")
    ap.add_argument("--netns-delay-ms", type=float, default=None,
                    help="run workers in network namespaces behind a bridge with this one-way delay per veth")
    ap.add_argument("--relay", action="store_true",
                    help="with --netns-delay-ms: delay in a user-space relay even where netem exists (also at 0 ms)")
    ap.add_argument("--no-netem", dest="netem", action="store_false", help=argparse.SUPPRESS)
    ap.add_argument("--worker-model", default=None,
                    help="workers load their share from this local copy instead of from the root")
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
    if args.netns_delay_ms is not None:
        if os.geteuid() != 0:
            ap.error("--netns-delay-ms needs root (ip netns, tc)")
        if sh("ip", "netns", "list", check=False).returncode != 0:
            ap.error("`ip netns` does not work here")
        if args.netns_delay_ms > 0 and not args.relay and args.netem and not netem_available():
            print("note: this kernel has no sch_netem; delaying in a user-space relay instead", file=sys.stderr)
            args.netem = False

    from dllama_py.architectures import read_layout

    layout = read_layout(args.model)
    p = layout.params
    print(f"{args.model}: {layout.arch.builder}, dim {p['dim']}, {p['n_layers']} layers, vocab {p['vocab_size']}, "
          f"{args.threads} thread(s) per node, {args.prompt_tokens}-token prompt, {args.gen_tokens} decode steps",
          flush=True)
    rows = []
    try:
        for exchange in args.exchange:
            for nodes in args.nodes:
                if nodes == 1 and any(r["nodes"] == 1 for r in rows):
                    continue
                t0 = time.perf_counter()
                runs = [measure(args.model, nodes, exchange, args, layout) for _ in range(args.repeats)]
                r = dict(runs[0])
                for key in ("decode", "prefill", "sent", "received", "sync", "sync_ms"):
                    r[key] = statistics.median(x[key] for x in runs)
                rows.append(r)
                print(f"  {nodes} node(s) {exchange}: {r['decode']:.2f} tok/s, sent {r['sent'] / 1e3:.1f} kB/tok, "
                      f"sync {r['sync']:.0%} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    finally:
        if args.netns_delay_ms is not None:
            NetnsNetwork.cleanup()
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
