"""`dllama-py bench`: prefill and decode speed, bytes read per token, share of memory bandwidth; with
--draft, greedy decoding with and without speculation (tokens/s, guesses kept, tokens per step); with
--parallel, the aggregate decode speed of several generations sharing each forward step."""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import numpy as np


@dataclass
class BenchResult:
    model: str
    cpu: str  # the SIMD the core was built for
    arch: str
    weights: str
    threads: int
    load_seconds: float
    prompt_tokens: int
    prefill_tokens_per_s: float
    gen_tokens: int
    decode_tokens_per_s: float
    weight_bytes_per_token: int
    kv_bytes_per_token: float  # KV cache read per decoded token (mean over the decode steps)
    decode_gb_per_s: float
    bandwidth_gb_per_s: float
    bandwidth_share: float
    kv_cache_bytes: int
    kv_cache_bytes_per_token: int
    peak_rss_bytes: int
    nodes: int = 1
    split: list[float] | None = None  # the nodes' weights (None: equal shares)
    net_bytes_sent_per_token: float = 0.0  # by this (root) node
    net_bytes_received_per_token: float = 0.0
    sync_share: float = 0.0  # of decode time spent in exchanges between nodes
    speculation: "SpeculationResult | None" = None

    def table(self) -> str:
        rows = [
            ("model", f"{self.model} ({self.arch}, {self.weights})"),
            ("threads", f"{self.threads} ({self.cpu})"),
            ("load", f"{self.load_seconds:.2f} s"),
            ("prefill", f"{self.prefill_tokens_per_s:,.1f} tok/s ({self.prompt_tokens} tokens)"),
            ("decode", f"{self.decode_tokens_per_s:,.2f} tok/s ({self.gen_tokens} tokens)"),
            ("bytes read per token", f"{(self.weight_bytes_per_token + self.kv_bytes_per_token) / 1e6:,.1f} MB "
                                     f"(weights {self.weight_bytes_per_token / 1e6:,.1f} MB, KV {self.kv_bytes_per_token / 1e6:,.2f} MB)"),
            ("decode memory traffic", f"{self.decode_gb_per_s:,.2f} GB/s"),
            ("memory bandwidth", f"{self.bandwidth_gb_per_s:,.2f} GB/s"),
            ("bandwidth reached", f"{self.bandwidth_share:.0%}"),
            ("KV cache", f"{self.kv_cache_bytes / 1e6:,.1f} MB ({self.kv_cache_bytes_per_token:,} bytes per token)"),
            ("peak RSS", f"{self.peak_rss_bytes / 1e6:,.0f} MB"),
        ]
        if self.nodes > 1:
            rows += [
                ("nodes", f"{self.nodes}" + (f", split {','.join(f'{w:g}' for w in self.split)}" if self.split else "")),
                ("network per token (root)", f"sent {self.net_bytes_sent_per_token / 1e3:,.1f} kB, "
                                             f"received {self.net_bytes_received_per_token / 1e3:,.1f} kB"),
                ("time in sync", f"{self.sync_share:.0%} of decode"),
            ]
        if self.speculation:
            rows += self.speculation.rows()
        width = max(len(k) for k, _ in rows)
        return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


@dataclass
class SpeculationResult:
    """Greedy decoding of the same prompt through the scheduler, plainly and speculatively."""

    draft: str
    draft_tokens: int
    plain_tokens_per_s: float
    tokens_per_s: float
    acceptance_rate: float
    tokens_per_step: float
    same_tokens: bool  # speculation gave the plain greedy tokens

    def rows(self) -> list[tuple[str, str]]:
        return [
            (f"decode, --draft {self.draft}", f"{self.tokens_per_s:,.2f} tok/s, {self.tokens_per_s / self.plain_tokens_per_s:.2f}x "
                                              f"plain ({self.plain_tokens_per_s:,.2f} tok/s through the same scheduler)"),
            ("guesses", f"{self.draft_tokens} per step, {self.acceptance_rate:.0%} kept, "
                        f"{self.tokens_per_step:.2f} tokens per step"),
            ("same tokens as plain", "yes" if self.same_tokens else "NO"),
        ]


def bench_speculation(eng, prompt: list[int], gen_tokens: int, draft: str, draft_tokens: int) -> SpeculationResult:
    """Greedy generations of gen_tokens after the prompt: plain, then with drafts (each after a reset, so
    neither reuses the other's cache)."""
    runs = []
    for d in (None, draft):
        eng.reset()
        req = eng.scheduler.submit(prompt, max_tokens=gen_tokens, draft=d, draft_tokens=draft_tokens)
        runs.append((list(req), req.stats))
    (plain, plain_stats), (tokens, stats) = runs
    return SpeculationResult(draft, draft_tokens, plain_stats.decode_tokens_per_second, stats.decode_tokens_per_second,
                             stats.acceptance_rate, stats.tokens_per_step, tokens == plain)


def run_bench(model_path, threads=None, prompt_tokens=128, gen_tokens=32, bandwidth_gbps=None, max_seq_len=None,
              print_table=True, workers=None, secret=None, exchange=None, tokenizer=None, draft=None,
              draft_tokens=4, prompt_text=None, split=None) -> BenchResult:
    """prompt_text: a prompt (encoded with the model's tokenizer) instead of prompt_tokens random tokens.
    draft: also measure greedy decoding with that speculation ("ngram" or "mtp"). split: as Engine's."""
    from . import _core
    from .engine import Engine

    t0 = time.perf_counter()
    eng = Engine(model_path, threads=threads, max_seq_len=max_seq_len or max(4096, prompt_tokens + gen_tokens + 1),
                 tokenizer=tokenizer, workers=workers, secret=secret, exchange=exchange, draft=draft,
                 draft_tokens=draft_tokens, split=split)
    load_seconds = time.perf_counter() - t0
    with eng:
        vocab = eng.config.vocab_size
        rng = np.random.default_rng(0)
        if prompt_text is not None:
            prompt = eng._require_tokenizer().encode_prompt(prompt_text)
            prompt_tokens = len(prompt)
        else:
            prompt = rng.integers(0, vocab, prompt_tokens).tolist()
        eng.forward(prompt[:8], all_logits=False)  # warm-up: page in weights, spin up threads
        eng.reset()

        t0 = time.perf_counter()
        logits = eng.forward(prompt, all_logits=False)
        prefill_s = time.perf_counter() - t0

        token = int(logits[-1].argmax())
        kv_read = 0
        eng.reset_net_stats()
        t0 = time.perf_counter()
        for _ in range(gen_tokens):
            kv_read += eng.model.kv_bytes_read_at(eng.position)
            token = int(eng.forward([token], all_logits=False)[-1].argmax())
        decode_s = time.perf_counter() - t0
        net = eng.net_stats()
        speculation = bench_speculation(eng, prompt, gen_tokens, draft, draft_tokens) if draft else None

        weight_bytes = eng.model.weight_bytes_per_token
        decode_tps = gen_tokens / decode_s
        kv_per_token = kv_read / gen_tokens
        traffic = (weight_bytes + kv_per_token) * decode_tps
        bw = bandwidth_gbps * 1e9 if bandwidth_gbps else _core.read_bandwidth(1 << 30, eng.threads, 3)
        result = BenchResult(
            model=str(model_path), cpu=_core.cpu_features(), arch=eng.layout.arch.builder, weights=eng.layout.weight_type.name,
            threads=eng.threads, load_seconds=load_seconds, prompt_tokens=prompt_tokens,
            prefill_tokens_per_s=prompt_tokens / prefill_s, gen_tokens=gen_tokens, decode_tokens_per_s=decode_tps,
            weight_bytes_per_token=weight_bytes, kv_bytes_per_token=kv_per_token, decode_gb_per_s=traffic / 1e9,
            bandwidth_gb_per_s=bw / 1e9, bandwidth_share=traffic / bw, kv_cache_bytes=eng.kv_cache_bytes,
            kv_cache_bytes_per_token=eng.kv_cache_bytes // eng.context_length,
            peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            nodes=eng.n_nodes, split=eng.split or None, net_bytes_sent_per_token=net["bytes_sent"] / gen_tokens,
            net_bytes_received_per_token=net["bytes_received"] / gen_tokens,
            sync_share=net["seconds_in_sync"] / decode_s, speculation=speculation,
        )
    if print_table:
        print(result.table())
    return result


@dataclass
class ParallelResult:
    streams: int
    step_ms: float  # median time of a decode step: the time between two tokens of one stream
    best_step_ms: float

    @property
    def decode_tokens_per_s(self) -> float:  # all streams together
        return 1000 * self.streams / self.step_ms


def parallel_table(results: list[ParallelResult]) -> str:
    base = results[0].decode_tokens_per_s / results[0].streams
    lines = [f"{'streams':>7}  {'aggregate tok/s':>15}  {'per stream tok/s':>16}  {'ms/token/stream':>15}  "
             f"{'x one stream':>12}  {'best step ms':>12}"]
    for r in results:
        lines.append(f"{r.streams:>7}  {r.decode_tokens_per_s:>15,.1f}  {r.decode_tokens_per_s / r.streams:>16,.1f}  "
                     f"{r.step_ms:>15,.1f}  {r.decode_tokens_per_s / base:>11.2f}x  {r.best_step_ms:>12,.1f}")
    return "\n".join(lines)


def run_parallel_bench(model_path, parallel: list[int], threads=None, prompt_tokens=32, gen_tokens=32,
                       max_seq_len=None, print_table=True, workers=None, secret=None,
                       exchange=None, split=None) -> list[ParallelResult]:
    """Decode steps of 1, 2, 4... streams: each stream count has its own KV-cache slots holding distinct
    random prompts, and gen_tokens rounds each run one greedy decode step of every stream count in turn,
    so that all of them see the same machine (a shared one gets busier and quieter over a run); each
    count's median step time gives its aggregate tok/s."""
    from .engine import Engine

    if not parallel or min(parallel) < 1:
        raise ValueError("--parallel needs stream counts >= 1, e.g. 1,2,4,8")
    with Engine(model_path, threads=threads, max_sequences=sum(parallel),
                max_seq_len=max_seq_len or prompt_tokens + gen_tokens + 1, workers=workers, secret=secret,
                exchange=exchange, split=split) as eng:
        model = eng.model
        rng = np.random.default_rng(0)
        first = 0
        slots, tokens = {}, {}
        for n in parallel:
            slots[n] = np.arange(first, first + n, dtype=np.int32)
            first += n
            for s in slots[n]:
                prompt = rng.integers(0, eng.config.vocab_size, prompt_tokens).astype(np.int32)
                tokens[s] = int(model.forward(prompt, False, int(s))[-1].argmax())
        times: dict[int, list[float]] = {n: [] for n in parallel}
        for i in range(gen_tokens):
            for n in parallel[i % len(parallel):] + parallel[:i % len(parallel)]:  # a different order each round
                positions = np.array([model.length(int(s)) for s in slots[n]], dtype=np.int32)
                step_tokens = np.array([tokens[s] for s in slots[n]], dtype=np.int32)
                t0 = time.perf_counter()
                logits = model.step(step_tokens, slots[n], positions, np.ones(n, dtype=bool))
                times[n].append(time.perf_counter() - t0)
                for s, row in zip(slots[n], logits):
                    tokens[s] = int(row.argmax())
    results = [ParallelResult(n, 1000 * float(np.median(times[n])), 1000 * min(times[n])) for n in parallel]
    if print_table:
        print(parallel_table(results))
    return results
