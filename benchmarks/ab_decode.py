"""Decode speed of two builds of dllama_py, A/B, on a busy machine.

    python benchmarks/ab_decode.py /tmp/llama-1b-q40.m /tmp/before /work/repo/src --rounds 80

Each build (a directory holding a dllama_py package with its compiled core, given as for PYTHONPATH)
runs in its own process with the model loaded once; the two take turns decoding a short window of
tokens (A B, then B A, ...), so that load from other jobs, which changes from second to second, hits
both alike. Prints each side's median tokens/s and the median and quartiles of the per-window ratio
B / A: a change is a slowdown only when the ratio's quartiles stay below 1.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

PROMPT = list(range(1, 17))


def serve(model: str, threads: int):
    """One side: loads the model, then for each line N on stdin decodes N tokens and prints the seconds."""
    from dllama_py import Engine

    eng = Engine(model, threads=threads, max_seq_len=1024)
    eng.forward(PROMPT, all_logits=False)
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        if eng.position + n >= eng.context_length:
            eng.reset()
            eng.forward(PROMPT, all_logits=False)
        start = time.perf_counter()
        for _ in range(n):
            eng.forward([5], all_logits=False)
        print(time.perf_counter() - start, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("a", help="PYTHONPATH of build A (e.g. a copy of src/ from before a change)")
    ap.add_argument("b", help="PYTHONPATH of build B")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=16, help="decode steps per window")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    sides = {}
    for name, path in (("A", args.a), ("B", args.b)):
        cmd = [sys.executable, __file__, "--serve", args.model, str(args.threads)]
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=path))
        if p.stdout.readline().strip() != "ready":
            sys.exit(f"build {name} ({path}) did not load {args.model}")
        sides[name] = p
    rates = {"A": [], "B": []}
    for r in range(args.rounds):
        for name in ("A", "B") if r % 2 == 0 else ("B", "A"):
            sides[name].stdin.write(f"{args.tokens}\n")
            sides[name].stdin.flush()
            rates[name].append(args.tokens / float(sides[name].stdout.readline()))
    for p in sides.values():
        p.stdin.close()
        p.wait()
    for name, path in (("A", args.a), ("B", args.b)):
        print(f"{name} ({path}): median {statistics.median(rates[name]):.2f} tok/s, best {max(rates[name]):.2f}")
    ratios = [b / a for a, b in zip(rates["A"], rates["B"])]
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    print(f"B / A per window: median {q2:.3f}, quartiles {q1:.3f} .. {q3:.3f} ({args.rounds} windows of {args.tokens} tokens)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], int(sys.argv[3]))
    else:
        main()
