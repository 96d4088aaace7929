"""A per-token decode time model for tensor parallelism over N nodes (docs/distributed.md, "Time model").

    token time = compute + exchanges x (latency + overhead) + bytes on the busiest link / link rate

- compute: the bytes the slowest node reads per token / its read bandwidth. Nodes work in lockstep (every
  all-gather waits for the last partial), so the largest share sets the pace.
- exchanges: 2 per layer (after attention, after the FFN) + 1 (step header and embedded row, root to
  workers) + 1 (logits, workers to root); each is one sequential hop of one-way latency.
- overhead: software cost per exchange (syscalls, wake-ups, summing partials), measured on loopback.
- bytes / rate: what the busiest link carries in each exchange. With a switch and one NIC per node
  (shared_nic, a home network) a node's N-1 sends share its NIC; with one link per pair of nodes (the link
  emulator: each connection is its own link) each link carries one partial.

    python benchmarks/time_model.py          # the GLM-4.5-Air / GLM-4.7-Flash home-PC table
"""

from __future__ import annotations

from dataclasses import dataclass

Q40_BYTES_PER_WEIGHT = 18 / 32  # f16 scale + 32 4-bit values


@dataclass
class Link:
    latency_s: float  # one-way delay of a hop, network stacks included
    rate_bps: float  # bits/s; 0 = unlimited
    shared_nic: bool = True  # each node's sends to its N-1 peers share one NIC (False: one link per pair)

    def seconds(self, nbytes: float) -> float:
        return 8 * nbytes / self.rate_bps if self.rate_bps else 0.0


def partial_bytes(dim: int, exchange: str) -> int:
    """B(dim): one node's partial sum of one row on the wire."""
    return dim // 32 * 34 if exchange == "q80" else 4 * dim


def token_seconds(compute_s: float, nodes: int, n_layers: int, dim: int, vocab: int, exchange: str, link: Link,
                  overhead_s: float = 0.0) -> dict[str, float]:
    """Modelled decode seconds per token and its parts: compute, latency, transfer, overhead, total."""
    if nodes < 2:
        return dict(compute=compute_s, latency=0.0, transfer=0.0, overhead=0.0, total=compute_s)
    fan = nodes - 1 if link.shared_nic else 1
    b = partial_bytes(dim, exchange)
    transfer = (2 * n_layers * link.seconds(fan * b)  # all-gathers: each node sends B to each peer
                + link.seconds(fan * (16 + 4 * dim))  # header + embedded row from the root
                + link.seconds(4 * vocab / nodes * fan))  # logits: the root receives every worker's share
    exchanges = 2 * n_layers + 2
    parts = dict(compute=compute_s, latency=exchanges * link.latency_s, transfer=transfer,
                 overhead=exchanges * overhead_s)
    parts["total"] = sum(parts.values())
    return parts


# --- the GLM MoE models on home PCs -------------------------------------------------------------

@dataclass
class MoeModel:
    name: str
    dim: int
    n_layers: int
    dense_layers: int  # leading layers with a dense FFN
    dense_ff: int
    moe_ff: int
    experts_read: int  # routed experts per token + shared experts
    n_experts: int
    attention_params: int  # per layer
    vocab: int
    q40_gb: float  # approximate Q40 file size

    def bytes_read_per_token(self) -> float:
        """Q40 weights one token reads (routers are F32; the embedding row is negligible)."""
        ffn = 3 * self.dim  # gate, up, down per hidden row
        q = Q40_BYTES_PER_WEIGHT
        dense = self.dense_layers * (self.attention_params + ffn * self.dense_ff) * q
        moe_layers = self.n_layers - self.dense_layers
        moe = moe_layers * ((self.attention_params + ffn * self.moe_ff * self.experts_read) * q
                            + 4 * self.n_experts * self.dim)
        return dense + moe + self.vocab * self.dim * q


GLM45_AIR = MoeModel("GLM-4.5-Air (106B-A12B)", dim=4096, n_layers=46, dense_layers=1, dense_ff=10944, moe_ff=1408,
                     experts_read=9, n_experts=128, attention_params=2 * 4096 * 96 * 128 + 2 * 4096 * 8 * 128,
                     vocab=151552, q40_gb=60)
# MLA: q_a 2048x768, q_b 768x20x256, kv_a 2048x576, k_b/v_b 20 heads x 512 x (192 + 256), o 20x256x2048.
GLM47_FLASH = MoeModel("GLM-4.7-Flash (30B-A3B)", dim=2048, n_layers=47, dense_layers=1, dense_ff=10240,
                       moe_ff=1536, experts_read=5, n_experts=64,
                       attention_params=2048 * 768 + 768 * 20 * 256 + 2048 * 576 + 20 * 512 * 448 + 20 * 256 * 2048,
                       vocab=154880, q40_gb=17)


def home_table(read_gbps: float = 30.0, overhead_s: float = 50e-6) -> str:
    """Markdown: modelled decode tok/s of the GLM MoE models on 1-4 home PCs over 1, 2.5 and 10 GbE."""
    links = [("1 GbE, 0.1 ms", Link(100e-6, 1e9)), ("2.5 GbE, 0.1 ms", Link(100e-6, 2.5e9)),
             ("10 GbE, 0.05 ms", Link(50e-6, 10e9))]
    lines = ["| model | nodes | GB / node | compute ms | " + " | ".join(f"{n}: tok/s (ms exchanging)" for n, _ in links)
             + " |",
             "|---|---|---|---|" + "---|" * len(links)]
    for m in (GLM45_AIR, GLM47_FLASH):
        for nodes in (1, 2, 3, 4):
            compute = m.bytes_read_per_token() / nodes / (read_gbps * 1e9)
            cells = []
            for _, link in links:
                t = token_seconds(compute, nodes, m.n_layers, m.dim, m.vocab, "q80", link, overhead_s)
                cells.append(f"{1 / t['total']:.1f} ({(t['total'] - compute) * 1e3:.1f})")
            lines.append(f"| {m.name} | {nodes} | {m.q40_gb / nodes:.0f} | {compute * 1e3:.0f} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    for m in (GLM45_AIR, GLM47_FLASH):
        print(f"{m.name}: {m.bytes_read_per_token() / 1e9:.2f} GB read per token at Q40")
    print(home_table())
