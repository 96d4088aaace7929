"""Concurrent clients against `dllama-py serve`: aggregate tokens/s and time to first token.

    PYTHONPATH=src python benchmarks/serve_bench.py -m /tmp/llama-1b-q40.m --clients 1,16 --parallel 1 -t 2

Starts the server (a subprocess, `--port 0`), then for each client count C runs C threads that each send
`--requests` streamed completions (the official openai client; a prompt of --prompt-tokens tokens, a
different one per request so no prefix is shared; --max-tokens tokens, end-of-sequence banned so every
reply has the same length; logprobs=0 so that every token sends a chunk, even one that completes no
character) at the same moment. Prints per C: aggregate completion tokens/s (all tokens
over the wall time), p50/p95 time to first token, and the mean per-stream decode rate.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np


def start_server(model: str, threads: int, parallel: int, max_seq_len: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "dllama_py.cli", "serve", "-m", model, "--port", "0", "-t", str(threads),
           "--parallel", str(parallel), "--queue-size", "256", "--max-seq-len", str(max_seq_len)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    match = re.search(r"on (http://\S+) ", line)
    if not match:
        proc.kill()
        raise RuntimeError(f"the server did not start: {line!r}")
    return proc, match.group(1)


def one_stream(client, prompt: str, max_tokens: int, bias: dict, out: list, start: threading.Event):
    start.wait()
    t0 = time.perf_counter()
    first, tokens = None, 0
    for chunk in client.completions.create(model="m", prompt=prompt, max_tokens=max_tokens, temperature=0,
                                           logit_bias=bias, logprobs=0, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.choices and chunk.choices[0].logprobs and first is None:  # logprobs: a chunk for every token
            first = time.perf_counter()
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    out.append((t0, first, time.perf_counter(), tokens))


def run(url: str, clients: int, requests: int, prompt_tokens: int, max_tokens: int, bias: dict, seed: int):
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
    rng = random.Random(seed)
    words = "the quick brown fox jumps over a lazy dog while seven cats watch from an old red barn".split()
    results: list = []
    began = time.perf_counter()
    for _ in range(requests):
        start = threading.Event()
        # about one token per byte with the benchmark models' byte-level tokenizer
        prompts = [" ".join(rng.choice(words) for _ in range(prompt_tokens // 4))[:prompt_tokens] for _ in range(clients)]
        threads = [threading.Thread(target=one_stream, args=(client, p, max_tokens, bias, results, start)) for p in prompts]
        for t in threads:
            t.start()
        start.set()
        for t in threads:
            t.join()
    return results, time.perf_counter() - began


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1, help="the server's --parallel")
    ap.add_argument("--clients", default="1,16", help="client counts, comma-separated")
    ap.add_argument("--requests", type=int, default=1, help="rounds of requests per client")
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-seq-len", type=int, default=512)
    args = ap.parse_args()
    bundle = json.loads(Path(args.model + ".tokenizer.json").read_text())
    bias = {str(t): -100 for t in bundle.get("eos_token_ids", [])}
    proc, url = start_server(args.model, args.threads, args.parallel, args.max_seq_len)
    try:
        run(url, 1, 1, 8, 4, bias, seed=99)  # warm-up
        print(f"{args.model}: server --parallel {args.parallel}, {args.threads} threads; prompts of ~{args.prompt_tokens} "
              f"tokens, {args.max_tokens} generated per request")
        print(f"{'clients':>7s} {'requests':>8s} {'aggregate tok/s':>15s} {'TTFT p50 s':>10s} {'TTFT p95 s':>10s} "
              f"{'per-stream tok/s':>16s}")
        for clients in [int(c) for c in args.clients.split(",")]:
            results, wall = run(url, clients, args.requests, args.prompt_tokens, args.max_tokens, bias, seed=clients)
            ttft = np.array([first - t0 for t0, first, _, _ in results])
            tokens = sum(r[3] for r in results)
            stream_rates = [(n - 1) / (end - first) for _, first, end, n in results if n > 1 and end > first]
            print(f"{clients:7d} {len(results):8d} {tokens / wall:15.1f} {np.percentile(ttft, 50):10.2f} "
                  f"{np.percentile(ttft, 95):10.2f} {np.mean(stream_rates):16.1f}", flush=True)
    finally:
        proc.terminate()
        proc.wait(30)


if __name__ == "__main__":
    main()
