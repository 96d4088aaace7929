"""Decode speed of two builds of dllama_py, A/B, on a busy machine.

    python benchmarks/ab_decode.py /tmp/llama-1b-q40.m /tmp/before /work/repo/src --rounds 80
    python benchmarks/ab_decode.py /tmp/llama-1b-q40.m /tmp/before /work/repo/src --streams 8   # batched decode

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


def serve(model: str, threads: int, streams: int):
    """One side: loads the model, then for each line N on stdin decodes N tokens of each stream and prints
    the seconds. One stream decodes through Engine.forward (so that builds from before batched steps
    compare too); several decode together, one Model.step over all of them per token."""
    import numpy as np

    from dllama_py import Engine

    if streams == 1:
        eng = Engine(model, threads=threads, max_seq_len=1024)

        def restart():
            eng.reset()
            eng.forward(PROMPT, all_logits=False)

        def decode():
            eng.forward([5], all_logits=False)
    else:
        eng = Engine(model, threads=threads, max_seq_len=1024, max_sequences=streams)
        slots = np.arange(streams, dtype=np.int32)

        def restart():
            for s in range(streams):
                eng.model.truncate(s, 0)
                eng.model.forward(np.asarray(PROMPT, dtype=np.int32) + s, False, s)

        def decode():
            positions = np.array([eng.model.length(s) for s in range(streams)], dtype=np.int32)
            eng.model.step(np.full(streams, 5, dtype=np.int32), slots, positions, np.ones(streams, dtype=bool))

    restart()
    print("ready", flush=True)
    for line in sys.stdin:
        n = int(line)
        if eng.position + n >= eng.context_length:  # slot 0's length: every stream has the same
            restart()
        start = time.perf_counter()
        for _ in range(n):
            decode()
        print(time.perf_counter() - start, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("a", help="PYTHONPATH of build A (e.g. a copy of src/ from before a change)")
    ap.add_argument("b", help="PYTHONPATH of build B")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--tokens", type=int, default=16, help="decode steps per window")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--streams", type=int, default=1, help="sequences decoded together, one step for all")
    args = ap.parse_args()
    sides = {}
    for name, path in (("A", args.a), ("B", args.b)):
        cmd = [sys.executable, __file__, "--serve", args.model, str(args.threads), str(args.streams)]
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
            rates[name].append(args.tokens * args.streams / float(sides[name].stdout.readline()))
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
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        main()
