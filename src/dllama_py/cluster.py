"""`dllama-py cluster check`: asks each worker about itself (a probe: no session is started) and, given a
model, whether it fits the split and about how fast it would decode; and `--split auto`, which weighs
the nodes by what the same probes report."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from . import _core

HOPS_PER_LAYER = 2  # an all-reduce after attention and after the FFN (docs/distributed.md)


@dataclass
class Probe:
    address: str
    info: dict | None = None  # what _core.probe_worker answered
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.info is not None


def probe_all(addresses: list[str], secret: str, timeout: float = 5.0) -> list[Probe]:
    out = []
    for address in addresses:
        try:
            out.append(Probe(address, _core.probe_worker(address, secret, int(timeout * 1000))))
        except (RuntimeError, ValueError) as e:
            out.append(Probe(address, error=str(e)))
    return out


def available_ram() -> int:
    """This machine's available RAM in bytes (MemAvailable, as workers report theirs)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def describe(p: Probe) -> str:
    if not p.ok:
        return f"{p.address}: NOT READY: {p.error}"
    i = p.info
    local = f", local model {i['model_identity'][:12]}…" if i["model_identity"] else ""
    return (f"{p.address}: ok, protocol {_core.protocol_version()}, secret accepted, {i['cores']} cores, "
            f"{_gb(i['available_ram_bytes'])} of {_gb(i['ram_bytes'])} RAM free, reads {_gb(i['read_bandwidth'])}/s, "
            f"round trip {i['round_trip_ms']:.2f} ms, {i['bytes_per_second'] / 1e6:,.0f} MB/s{local}")


@dataclass
class Plan:
    """A model on root + workers: memory per node and the expected decode speed."""

    node_bytes: list[int]  # weights, mapped file bytes and KV cache (node_memory.py), root first
    fits: list[bool]
    seconds_compute: float
    seconds_network: float

    @property
    def tokens_per_second(self) -> float:
        return 1.0 / (self.seconds_compute + self.seconds_network)


def plan(model: str | os.PathLike, probes: list[Probe], root_bandwidth: float, root_available: int,
         max_seq_len: int | None = None, split: list[float] | None = None) -> Plan:
    """Each node holds its share (node_memory.py, weighted by `split`) and reads that part of the bytes
    a token needs, at its own bandwidth; each token also waits 2·layers + 2 network hops (half a round
    trip each) and moves its all-reduce partials (dim values per hop to every peer, Q80)."""
    from .architectures import read_layout
    from .engine import model_config
    from .node_memory import node_memory

    layout = read_layout(Path(model))
    cfg = model_config(layout, max_seq_len)
    n = len(probes) + 1
    weights = split or [1.0] * n
    node_bytes = [node_memory(layout, i, n, cfg.seq_len, cfg.kv_f16, split=weights).total for i in range(n)]
    per_token = 0.0
    for t in layout.tensors:
        if t.spec.name == "embedding":
            per_token += t.nbytes / t.spec.rows  # one row
        elif ".experts." in t.spec.name:
            per_token += t.nbytes * cfg.n_active_experts / cfg.n_experts
        else:
            per_token += t.nbytes
    available = [root_available] + [p.info["available_ram_bytes"] for p in probes]
    fits = [need < free for need, free in zip(node_bytes, available)]
    bandwidths = [root_bandwidth] + [p.info["read_bandwidth"] for p in probes]
    compute = max(per_token * w / sum(weights) / bw for w, bw in zip(weights, bandwidths))
    worst_trip = max(p.info["round_trip_ms"] for p in probes) / 1000
    slowest = min(p.info["bytes_per_second"] for p in probes)
    exchanged = HOPS_PER_LAYER * cfg.n_layers * (n - 1) * cfg.dim / 32 * 34  # Q80 partials per token
    network = (HOPS_PER_LAYER * cfg.n_layers + 2) * worst_trip / 2 + exchanged / slowest
    return Plan(node_bytes, fits, compute, network)


def parse_split(value) -> list[float] | str | None:
    """A split as Engine(split=) and --split take it: None (equal shares), "auto", or one weight per node,
    root first, as numbers or as text ("2,1,1"). The weights themselves are checked by the C++ rule
    (_core.check_split_weights)."""
    if value is None or value == "auto":
        return value
    try:
        return [float(w) for w in (value.split(",") if isinstance(value, str) else value)]
    except (TypeError, ValueError):
        raise ValueError(f"expected one weight per node, root first (e.g. 2,1,1), or auto; got {value!r}") from None


# Auto weights are multiples of this (the fastest node has 1): the same machines get the same split from
# session to session, and so do the keys of the workers' slice caches.
AUTO_STEP = 0.05


@dataclass
class AutoSplit:
    """--split auto's choice: a weight per node (root first) and why."""

    weights: list[float]
    bandwidths: list[float]  # bytes/s, sustained
    capped: list[int]  # nodes whose weight was lowered to fit their free RAM

    def line(self, names: list[str]) -> str:
        weights = ",".join(f"{w:g}" for w in self.weights)
        reads = ", ".join(f"{name} {bw / 1e9:.1f}" for name, bw in zip(names, self.bandwidths))
        capped = f"; lowered to fit free RAM: {', '.join(names[i] for i in self.capped)}" if self.capped else ""
        return f"split auto: {weights} (read GB/s: {reads}{capped})"


def auto_split(layout, cfg, bandwidths: list[float], available: list[int]) -> AutoSplit:
    """Weights in proportion to each node's read bandwidth (decode reads each node's share of the weights
    once per token, so equal read times make the nodes finish together), then lowered for any node whose
    share (node_memory) would not fit its available RAM. ValueError when no such split fits."""
    from .node_memory import node_memory

    n, fastest = len(bandwidths), max(bandwidths)
    weights = [round(max(AUTO_STEP, round(bw / fastest / AUTO_STEP) * AUTO_STEP), 2) for bw in bandwidths]
    capped: list[int] = []
    for _ in range(8 * n):  # each round moves share off the nodes that are over; a few rounds settle
        need = [node_memory(layout, i, n, cfg.seq_len, cfg.kv_f16, split=weights).total for i in range(n)]
        over = [i for i in range(n) if need[i] > available[i]]
        if not over:
            return AutoSplit(weights, list(bandwidths), capped)
        if len(over) == n:  # lowering every weight moves nothing
            break
        for i in over:
            weights[i] = float(f"{weights[i] * 0.95 * available[i] / need[i]:.3g}")
            capped += [] if i in capped else [i]
        if min(weights) < AUTO_STEP / 100:
            break
    worst = max(range(n), key=lambda i: need[i] - available[i])
    raise ValueError(f"split auto: the model does not fit the nodes' free RAM: node {worst} needs "
                     f"{_gb(need[worst])} and has {_gb(available[worst])} (at {cfg.seq_len} positions of context)")


def auto_split_of_probes(layout, cfg, probes: list[Probe], root_bandwidth: float, root_available: int) -> AutoSplit:
    """auto_split with the root's figures and what the workers' probes reported."""
    return auto_split(layout, cfg, [root_bandwidth] + [p.info["read_bandwidth"] for p in probes],
                      [root_available] + [p.info["available_ram_bytes"] for p in probes])


def choose_auto_split(layout, cfg, workers: list[str], secret: str, threads: int, timeout: float = 5.0) -> AutoSplit:
    """Probes the workers (their read bandwidth and free RAM), measures this machine the same way, and
    weighs the nodes by auto_split."""
    probes = probe_all(workers, secret, timeout)
    for p in probes:
        if not p.ok:
            raise RuntimeError(f"split auto: {p.error}")
    return auto_split_of_probes(layout, cfg, probes, _core.node_read_bandwidth(threads), available_ram())


def check(addresses: list[str], secret: str, model: str | None = None, threads: int | None = None,
          out=print, split: list[float] | str | None = None) -> int:
    """Prints one line per worker (and the plan with a model, for `split`: weights, "auto" or equal);
    0 when every worker is ready (and the model fits), else 1."""
    probes = probe_all(addresses, secret)
    for p in probes:
        out(describe(p))
    ready = all(p.ok for p in probes)
    if model is None:
        return 0 if ready else 1
    if not ready:
        out(f"{model}: cannot plan the split until every worker answers")
        return 1
    from .architectures import read_layout
    from .engine import default_threads, model_config

    bandwidth = _core.node_read_bandwidth(threads or default_threads())
    available = available_ram()
    nodes = ["root"] + [pr.address for pr in probes]
    try:
        if split == "auto":
            layout = read_layout(Path(model))
            chosen = auto_split_of_probes(layout, model_config(layout, None), probes, bandwidth, available)
            out(chosen.line(nodes))
            split = chosen.weights
        p = plan(model, probes, bandwidth, available, split=split)
    except ValueError as e:  # a split the model cannot take (node_memory names the constraint)
        out(f"{model}: {e}")
        return 1
    out(f"{model} on {len(nodes)} nodes (weights and KV cache): "
        + ", ".join(f"{name} {_gb(need)} {'fits' if ok else 'DOES NOT FIT'}"
                    for name, need, ok in zip(nodes, p.node_bytes, p.fits)))
    out(f"expected decode: about {p.tokens_per_second:.1f} tokens/s ({p.seconds_compute * 1000:.1f} ms reading "
        f"weights on the slowest node + {p.seconds_network * 1000:.1f} ms on the network per token)")
    return 0 if all(p.fits) else 1
