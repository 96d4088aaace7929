"""Concurrent clients against `dllama-py serve`: aggregate tokens/s, aggregate decode and time to first token.

    PYTHONPATH=src python benchmarks/serve_bench.py -m /tmp/llama-1b-q40.m -t 2 --cases 1@1,8@8,16@8,16@16

Each case is CLIENTS@PARALLEL: that many clients at once against a server started with `--parallel
PARALLEL`. One server per parallel value runs for the whole benchmark (subprocesses on free ports; an
idle one sleeps), and the cases take turns round by round, so that other jobs' load on a shared machine
hits them alike; the first case (the baseline) runs again after every other case, and each ratio is to
the mean of the baseline runs just before and after it.

A client is one streamed completion from the official async `openai` client (one event loop for all):
a prompt of ~--prompt-tokens tokens, different per request so no prefix is shared, temperature 0,
--max-tokens tokens with `ignore_eos` so every reply has that length (usage gives the real count), and
`logprobs=0` so that every token sends a chunk, as a real model's text would (most tokens of
make_model.py's random models complete no character).
Per case (median over rounds):
- answered / failed requests;
- aggregate tok/s: all completion tokens / wall time from the first request sent to the last reply;
- decode tok/s: tokens per second while every slot the case can fill (min(clients, parallel)) held a
  request between its first and last token: the aggregate decode rate of a full batch, without the time
  a wave of requests spends reading its prompts; "median step": the same batch over the median time
  between two tokens of a stream in those windows (as `dllama-py bench --parallel` reports, since
  on a busy machine a few slow steps weigh on the mean);
- TTFT p50 / p95: request sent to its first token's chunk;
- per-client tok/s: mean of each request's tokens after the first / its first-to-last-token time;
- decode and median-step decode × the baseline's (the first case, e.g. 1@1: one client's) around it,
  median over rounds.

The clients run niced (--client-nice, default 10): on a machine of few cores their own work (~0.16 ms
of CPU per streamed token) would otherwise take cores from the server, which clients on other machines
do not.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import subprocess
import sys
import time

import numpy as np

WORDS = "the quick brown fox jumps over a lazy dog while seven cats watch from an old red barn".split()


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


async def one_request(client, prompt: str, max_tokens: int) -> dict:
    sent = time.perf_counter()
    times = []
    tokens = 0
    try:
        # The raw server-sent events, read with json: the client's pydantic models per chunk doubled its
        # CPU time (0.28 against 0.16 ms per token), taken from the server on a machine of few cores.
        async with client.completions.with_streaming_response.create(
                model="m", prompt=prompt, max_tokens=max_tokens, temperature=0, logprobs=0, stream=True,
                stream_options={"include_usage": True}, extra_body={"ignore_eos": True}) as response:
            async for line in response.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["logprobs"]:  # a token's chunk
                    times.append(time.perf_counter())
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as e:  # counted as failed, and said why
        return {"error": f"{type(e).__name__}: {e}"}
    if not times or tokens == 0:
        return {"error": "no tokens"}
    return {"sent": sent, "first": times[0], "last": times[-1], "times": times, "done": time.perf_counter(),
            "tokens": tokens}


def full_batch_rates(results: list[dict], batch: int) -> tuple[float, float]:
    """Tokens per second while `batch` requests were between their first and last token at once: all
    tokens over the time, and batch / the median time between two tokens of a request."""
    changes = sorted([(r["first"], 1) for r in results] + [(r["last"], -1) for r in results],
                     key=lambda c: (c[0], -c[1]))
    windows, active = [], 0
    for (t, change), (t_next, _) in zip(changes, changes[1:] + [(np.inf, 0)]):
        active += change
        if active == batch and t_next > t:
            windows.append((t, t_next))
    times = np.sort(np.concatenate([r["times"] for r in results]))
    tokens = sum(np.searchsorted(times, b, "right") - np.searchsorted(times, a, "right") for a, b in windows)
    seconds = sum(b - a for a, b in windows)
    gaps = [b - a for r in results for a, b in zip(r["times"], r["times"][1:])
            if any(start <= a and b <= end for start, end in windows)]
    if seconds <= 0 or not gaps:
        return 0.0, 0.0
    return tokens / seconds, batch / float(np.median(gaps))


async def run_case(client, clients: int, parallel: int, prompt_tokens: int, max_tokens: int,
                   rng: random.Random) -> dict:
    # about one token per byte with make_model.py's byte-level tokenizer
    prompts = [" ".join(rng.choice(WORDS) for _ in range(prompt_tokens))[:prompt_tokens] for _ in range(clients)]
    began = time.perf_counter()
    results = await asyncio.gather(*(one_request(client, p, max_tokens) for p in prompts))
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    if not ok:
        return {"answered": 0, "failed": len(errors), "errors": errors}
    decode, median_step = full_batch_rates(ok, min(clients, parallel)) if len(ok) == clients else (0.0, 0.0)
    return {"answered": len(ok), "failed": len(errors), "errors": errors,
            "tokens": sum(r["tokens"] for r in ok),
            "aggregate": sum(r["tokens"] for r in ok) / (max(r["done"] for r in ok) - began),
            "decode": decode, "median_step": median_step,
            "ttft": [r["first"] - r["sent"] for r in ok],
            "per_client": float(np.mean([(r["tokens"] - 1) / (r["last"] - r["first"]) for r in ok
                                         if r["last"] > r["first"]] or [0.0]))}


async def bench(urls: dict[int, str], cases: list[tuple[int, int]], args) -> None:
    import openai

    clients = {p: openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
               for p, url in urls.items()}
    rng = random.Random(args.seed)
    for p in urls:  # warm-up: first-call costs out of the figures
        await run_case(clients[p], 1, p, 8, 4, rng)
    rows: dict[tuple[int, int], list[dict]] = {case: [] for case in cases}
    ratios: dict[tuple[int, int], dict[str, list[float]]] = {c: {"decode": [], "median_step": []} for c in cases}
    base_case = cases[0]

    async def run(case):
        result = await run_case(clients[case[1]], *case, args.prompt_tokens, args.max_tokens, rng)
        rows[case].append(result)
        return result

    def name(case):
        return f"{case[0]}@{case[1]}"

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    for r in range(args.rounds):
        # the baseline runs before and after every other case; a ratio is to the mean of the two
        before = await run(base_case)
        line = [f"{name(base_case)} {before.get('decode', 0):.1f}"]
        for case in cases[1:]:
            result = await run(case)
            after = await run(base_case)
            for key, found in ratios[case].items():
                base = (before.get(key, 0) + after.get(key, 0)) / 2
                if before.get(key) and after.get(key) and result.get(key):
                    found.append(result[key] / base)
            line.append(f"{name(case)} {result.get('decode', 0):.1f} "
                        f"({ratios[case]['decode'][-1] if ratios[case]['decode'] else 0:.2f}x), "
                        f"{name(base_case)} {after.get('decode', 0):.1f}")
            before = after
        print(f"round {r + 1}: decode tok/s " + ", ".join(line), flush=True)
    print(f"\nload average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"{args.model}: {args.threads} threads, prompts of ~{args.prompt_tokens} tokens, {args.max_tokens} "
          f"tokens per reply, {args.rounds} rounds (medians; x: to the baseline {name(base_case)} around each run)")
    print(f"{'clients':>7s} {'--parallel':>10s} {'answered':>8s} {'failed':>6s} {'aggregate tok/s':>15s} "
          f"{'decode tok/s':>12s} {'x':>5s} {'median step':>11s} {'x':>5s} {'TTFT p50 s':>10s} {'TTFT p95 s':>10s} "
          f"{'per-client tok/s':>16s}")
    for case in cases:
        runs = rows[case]
        ok = [run for run in runs if run["answered"]]
        ttft = [t for run in ok for t in run["ttft"]]
        vs_base = {key: np.median(found) if found else 1.0 for key, found in ratios[case].items()}
        print(f"{case[0]:7d} {case[1]:10d} {sum(x['answered'] for x in runs):8d} {sum(x['failed'] for x in runs):6d} "
              f"{np.median([x['aggregate'] for x in ok]):15.1f} {np.median([x['decode'] for x in ok]):12.1f} "
              f"{vs_base['decode']:5.2f} {np.median([x['median_step'] for x in ok]):11.1f} {vs_base['median_step']:5.2f} "
              f"{np.percentile(ttft, 50):10.2f} {np.percentile(ttft, 95):10.2f} "
              f"{np.median([x['per_client'] for x in ok]):16.1f}")
        for error in sorted({e for run in runs for e in run["errors"]}):
            print(f"    failed: {error}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-m", "--model", required=True)
    ap.add_argument("-t", "--threads", type=int, default=2)
    ap.add_argument("--cases", default="1@1,8@8,16@8,16@16",
                    help="CLIENTS@PARALLEL, comma-separated; the first is the baseline of the ratios")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--max-seq-len", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--client-nice", type=int, default=10, help="niceness added for the clients (the servers keep the caller's)")
    args = ap.parse_args()
    cases = [tuple(int(x) for x in c.split("@")) for c in args.cases.split(",")]
    servers = {}
    try:
        for parallel in dict.fromkeys(p for _, p in cases):
            servers[parallel] = start_server(args.model, args.threads, parallel, args.max_seq_len)
        os.nice(args.client_nice)
        asyncio.run(bench({p: url for p, (_, url) in servers.items()}, cases, args))
    finally:
        for proc, _ in servers.values():
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
