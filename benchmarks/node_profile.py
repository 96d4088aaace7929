"""Where a decoded token's time goes on each node: CPU time, time spent runnable but not running
(run-queue wait: other processes had the core) and times the node was scheduled in (about one wake-up
per exchange it slept through), per token, from /proc/<pid>/task/*/schedstat; and the root's time in
collectives. Linux only; the workers are local `dllama-py worker`s reading the same model file.

    PYTHONPATH=src python benchmarks/node_profile.py /tmp/llama-1b-q40.m --nodes 2
    PYTHONPATH=src python benchmarks/node_profile.py /tmp/llama-1b-q40.m --nodes 2 --latency-ms 0.1 --node-cpu-quota 1

--latency-ms/--rate-mbit put the link emulator between the nodes and --node-cpu-quota the per-node CPU
groups, as in distributed_bench.py; $DLLAMA_NET_SPIN_US applies as set.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import cpu_groups
import distributed_bench as bench


def schedstat(pid: int) -> list[int]:
    """[ns on a CPU, ns runnable but waiting, times scheduled in], summed over the process's threads."""
    total = [0, 0, 0]
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            values = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()
        except FileNotFoundError:
            continue  # the thread ended meanwhile
        total = [a + int(b) for a, b in zip(total, values)]
    return total


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--gen-tokens", type=int, default=48)
    ap.add_argument("--latency-ms", type=float, default=None)
    ap.add_argument("--rate-mbit", type=float, default=1000.0)
    ap.add_argument("--node-cpu-quota", type=float, default=0.0)
    args = ap.parse_args(argv)
    if not 1 <= args.nodes <= 8 or not 1 <= args.gen_tokens <= 512:
        ap.error("--nodes 1..8, --gen-tokens 1..512")
    if args.node_cpu_quota and cpu_groups.available():
        ap.error(f"--node-cpu-quota: {cpu_groups.available()}")
    from dllama_py.engine import Engine

    logs = Path(tempfile.mkdtemp(prefix="dlprofile-"))
    groups = cpu_groups.NodeCpuGroups(args.node_cpu_quota, 5000) if args.node_cpu_quota else None
    procs, workers, relay = [], [], None
    try:
        for i in range(1, args.nodes):
            place = (lambda k: lambda pid: groups.place(pid, k))(i) if groups else None
            proc, address = bench.start_worker("127.0.0.1", None, logs / f"worker{i}.log", args.model, 1, place)
            procs.append(proc)
            workers.append(address)
        if workers and args.latency_ms is not None:
            relay = bench.Relay("127.0.0.1", workers, args.latency_ms, args.rate_mbit)
            workers = relay.addresses
            if groups:
                groups.place_network(relay.proc.pid)
        if groups:
            groups.place_self(0)
        with Engine(args.model, threads=1, max_seq_len=args.gen_tokens + 16, workers=workers or None) as eng:
            token = int(eng.forward(list(range(1, 9)), all_logits=False)[-1].argmax())
            eng.reset_net_stats()
            pids = [os.getpid()] + [p.pid for p in procs]
            before = [schedstat(pid) for pid in pids]
            start = time.perf_counter()
            for _ in range(args.gen_tokens):
                token = int(eng.forward([token], all_logits=False)[-1].argmax())
            seconds = time.perf_counter() - start
            after = [schedstat(pid) for pid in pids]
            net = eng.net_stats()
    finally:
        if groups:
            groups.release_self()
        for p in procs:
            bench._stop(p)
        if relay:
            relay.stop()
        if groups:
            groups.close()
    n = args.gen_tokens
    link = f", emulator {args.latency_ms:g} ms" if relay else ""
    quota = f", cpu quota {args.node_cpu_quota:g}" if groups else ""
    print(f"{args.nodes} node(s){link}{quota}: {n / seconds:.1f} tok/s, {seconds / n * 1e3:.2f} ms per token; root: "
          f"{net['seconds_in_sync'] / n * 1e3:.2f} ms in {net['syncs'] / n:.0f} collectives per token; "
          f"load average {os.getloadavg()[0]:.1f}")
    for node, (b, a) in enumerate(zip(before, after)):
        cpu, waiting, scheduled = ((x - y) / n for x, y in zip(a, b))
        print(f"  node {node}: CPU {cpu / 1e6:.2f} ms, run-queue wait {waiting / 1e6:.2f} ms, "
              f"scheduled in {scheduled:.0f} times per token")
    return 0


if __name__ == "__main__":
    sys.exit(main())
