"""`dllama-py cluster check`: asks each worker about itself (a probe: no session is started) and, given a
model, whether it fits the split and about how fast it would decode."""

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
         max_seq_len: int | None = None) -> Plan:
    """Each node holds its share (node_memory.py) and reads about 1/N of the bytes a token needs, at its
    own bandwidth; each token also waits 2·layers + 2 network hops (half a round trip each) and moves
    its all-reduce partials (dim values per hop to every peer, Q80)."""
    from .architectures import read_layout
    from .engine import model_config
    from .node_memory import node_memory

    layout = read_layout(Path(model))
    cfg = model_config(layout, max_seq_len)
    n = len(probes) + 1
    node_bytes = [node_memory(layout, i, n, cfg.seq_len, cfg.kv_f16).total for i in range(n)]
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
    compute = max(per_token / n / bw for bw in [root_bandwidth] + [p.info["read_bandwidth"] for p in probes])
    worst_trip = max(p.info["round_trip_ms"] for p in probes) / 1000
    slowest = min(p.info["bytes_per_second"] for p in probes)
    exchanged = HOPS_PER_LAYER * cfg.n_layers * (n - 1) * cfg.dim / 32 * 34  # Q80 partials per token
    network = (HOPS_PER_LAYER * cfg.n_layers + 2) * worst_trip / 2 + exchanged / slowest
    return Plan(node_bytes, fits, compute, network)


def check(addresses: list[str], secret: str, model: str | None = None, threads: int | None = None,
          out=print) -> int:
    """Prints one line per worker (and the plan with a model); 0 when every worker is ready (and the
    model fits), else 1."""
    probes = probe_all(addresses, secret)
    for p in probes:
        out(describe(p))
    ready = all(p.ok for p in probes)
    if model is None:
        return 0 if ready else 1
    if not ready:
        out(f"{model}: cannot plan the split until every worker answers")
        return 1
    from .engine import default_threads

    bandwidth = _core.read_bandwidth(256 << 20, threads or default_threads(), 2)
    available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    try:
        p = plan(model, probes, bandwidth, available)
    except ValueError as e:  # a split the model cannot take (node_memory names the constraint)
        out(f"{model}: {e}")
        return 1
    nodes = ["root"] + [pr.address for pr in probes]
    out(f"{model} on {len(nodes)} nodes (weights and KV cache): "
        + ", ".join(f"{name} {_gb(need)} {'fits' if ok else 'DOES NOT FIT'}"
                    for name, need, ok in zip(nodes, p.node_bytes, p.fits)))
    out(f"expected decode: about {p.tokens_per_second:.1f} tokens/s ({p.seconds_compute * 1000:.1f} ms reading "
        f"weights on the slowest node + {p.seconds_network * 1000:.1f} ms on the network per token)")
    return 0 if all(p.fits) else 1
