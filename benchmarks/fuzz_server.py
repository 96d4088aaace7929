"""Fuzzing `dllama-py serve`: random JSON bodies and raw bytes, each on its own connection; every case must
be answered with an HTTP status, and the server must be alive afterwards.

    PYTHONPATH=src python benchmarks/fuzz_server.py -n 10000            # a tiny model, a server on port 0
    PYTHONPATH=src python benchmarks/fuzz_server.py --url http://127.0.0.1:8000 -n 1000   # a running one

Cases: (1) requests for the real routes whose bodies are valid requests with a few fields replaced by
random values (wrong types, NaN and Infinity, huge and negative numbers, deep nesting, odd unicode),
(2) random JSON documents, (3) random bytes, alone or after a request line and headers, sent as the body
or as the request itself. Counted per kind: answered 2xx / 4xx / 5xx, closed without an answer, and no
answer within the time limit (a hang). The server runs with a 1 s body timeout, so a body shorter than
its Content-Length is answered 408 within the limit.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

ROUTES = ["/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/metrics", "/", "/v1/embeddings",
          "/static/chat.js", "/static/../../etc/passwd", "/v1/models/tiny"]
CHAT = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0.5}
COMPLETION = {"prompt": "Hello", "max_tokens": 4}
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n",
          "seed", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "stream", "stream_options",
          "logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "chat_template_kwargs", "echo",
          "suffix", "best_of", "return_tokens_as_token_ids"]


def random_value(rng: random.Random, depth: int = 0):
    kinds = ["int", "float", "str", "bool", "null", "special"] + (["list", "dict"] if depth < 4 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.choice([0, 1, -1, 2, 5, 16, 17, 100, 4096, 2**31, -2**31, 2**63, 2**64 + 1, -10**30,
                           rng.randint(-10**6, 10**6)])
    if kind == "float":
        return rng.choice([0.0, -0.0, 0.5, 1.5, -1.5, 2.0000001, 1e308, -1e308, 5e-324, rng.uniform(-10, 10)])
    if kind == "str":
        return rng.choice(["", "abc", "0.5", "NaN", "\x00", "é" * rng.randint(1, 50), "\ud83d\ude00", "<tool_call>",
                           "<think>", "{{ 7*7 }}", "{% for x in range(10) %}x{% endfor %}", "a" * rng.randint(0, 3000),
                           "json_object", "json_schema", "function", "user", "auto", "required", "none"])
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "special":  # literals Python's json writes and reads, but JSON does not allow
        return rng.choice([float("nan"), float("inf"), float("-inf")])
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(FIELDS + ["role", "content", "type", "function", "name", "schema", "json_schema", "x"]):
            random_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def mutated_request(rng: random.Random) -> tuple[str, bytes]:
    route, body = rng.choice([("/v1/chat/completions", CHAT), ("/v1/completions", COMPLETION)])
    body = json.loads(json.dumps(body))
    for _ in range(rng.randint(1, 3)):
        field = rng.choice(FIELDS)
        if rng.random() < 0.1:
            body.pop(field, None)
        else:
            body[field] = random_value(rng)
    if rng.random() < 0.3 and isinstance(body.get("messages"), list) and body["messages"]:
        body["messages"][0] = random_value(rng) if rng.random() < 0.5 else {
            "role": rng.choice(["user", "assistant", "tool", "system", "x"]), "content": random_value(rng)}
    body.setdefault("max_tokens", 4)  # generations stay short (a missing max_tokens means the whole context)
    return route, json.dumps(body, allow_nan=True).encode()


def http_request(method: str, route: str, body: bytes, headers: dict | None = None, length: int | None = None) -> bytes:
    head = [f"{method} {route} HTTP/1.1", "Host: fuzz", "Content-Type: application/json",
            f"Content-Length: {len(body) if length is None else length}", "Connection: close"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def make_case(rng: random.Random) -> tuple[str, bytes]:
    """(kind, the bytes to send)."""
    roll = rng.random()
    if roll < 0.45:
        route, body = mutated_request(rng)
        if rng.random() < 0.1:  # a Content-Length that disagrees with the body
            return "json", http_request("POST", route, body, length=max(0, len(body) + rng.choice([-5, 3, 50])))
        return "json", http_request("POST", route, body)
    if roll < 0.65:
        body = json.dumps(random_value(rng), allow_nan=True).encode()
        return "json", http_request(rng.choice(["POST", "GET", "PUT", "DELETE"]), rng.choice(ROUTES), body)
    noise = rng.randbytes(rng.randint(0, 2000))
    if roll < 0.85:
        return "bytes", http_request("POST", rng.choice(ROUTES[:2]), noise)
    if roll < 0.93:  # broken request lines and headers
        line = rng.choice([b"POST / HTTP/1.1", b"GET", b"\x00\x01", b"POST /v1/completions HTTP/9.9",
                           b"POST /v1/completions HTTP/1.1\r\nContent-Length: -1", b"GET /" + b"a" * 70000 + b" HTTP/1.1",
                           b"POST /v1/completions HTTP/1.1\r\nContent-Length: 12\r\nTransfer-Encoding: chunked"])
        return "bytes", line + b"\r\n" + noise[:200].replace(b"\r\n\r\n", b"") + b"\r\n\r\n"
    return "bytes", noise.replace(b"\r\n\r\n", b"") + b"\r\n\r\n"


def send(host: str, port: int, data: bytes, timeout: float) -> str:
    """'2xx', '4xx', '5xx', 'closed' (no status line before the connection closed) or 'hang'."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            deadline = time.monotonic() + timeout
            try:
                s.sendall(data)
            except OSError:
                pass  # the server may answer (e.g. 413) and close before reading everything
            reply = b""
            while b"\r\n" not in reply:
                if time.monotonic() > deadline:
                    return "hang"
                try:
                    chunk = s.recv(4096)
                except socket.timeout:
                    return "hang"
                except OSError:
                    break
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return "closed"
    parts = reply.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return "closed"
    return f"{parts[1][:1].decode()}xx"


def alive(host: str, port: int) -> bool:
    return send(host, port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 10) == "2xx"


def fuzz_server(host: str, port: int, n: int, seed: int = 0, timeout: float = 10.0,
                on_case=None) -> dict[str, Counter]:
    """Sends n cases; returns per kind a Counter of outcomes, and 'alive' checks every 500 cases."""
    rng = random.Random(seed)
    counts: dict[str, Counter] = {"json": Counter(), "bytes": Counter(), "health": Counter()}
    for i in range(n):
        kind, data = make_case(rng)
        outcome = send(host, port, data, timeout)
        counts[kind][outcome] += 1
        if on_case is not None:
            on_case(i, kind, data, outcome)
        if (i + 1) % 500 == 0 or i + 1 == n:
            counts["health"]["alive" if alive(host, port) else "dead"] += 1
    return counts


def start_tiny_server(work: Path):
    """A server for a tiny random model (benchmarks/make_model.py tiny) with a short context, so that
    valid fuzzed requests stay quick."""
    from dllama_py import Engine
    from dllama_py.convert import convert
    from dllama_py.server import ApiServer, ServerOptions

    subprocess.run([sys.executable, str(Path(__file__).parent / "make_model.py"), "tiny", str(work / "hf")],
                   check=True, capture_output=True)
    convert(work / "hf", work / "tiny.m", dtype="q80", progress=False, log=lambda *a: None)
    engine = Engine(work / "tiny.m", threads=1, max_seq_len=64)
    server = ApiServer(engine, port=0, options=ServerOptions(body_timeout=1.0, max_body_bytes=1 << 20,
                                                             max_queue=256)).start()
    return engine, server


def run(n: int, seed: int = 0, url: str | None = None) -> dict[str, Counter]:
    if url:
        u = urlparse(url)
        return fuzz_server(u.hostname, u.port or 80, n, seed)
    with tempfile.TemporaryDirectory() as work:
        engine, server = start_tiny_server(Path(work))
        try:
            return fuzz_server(server.host, server.port, n, seed)
        finally:
            server.stop()
            engine.close()


def main():
    ap = argparse.ArgumentParser(description="Fuzz the HTTP server with random JSON bodies and raw bytes.")
    ap.add_argument("-n", type=int, default=10000, help="cases (default 10,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--url", default=None, help="a running server (default: start one on a tiny model)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    counts = run(args.n, args.seed, args.url)
    print(f"server fuzz: {args.n} cases in {time.perf_counter() - t0:.0f} s (seed {args.seed})")
    for kind in ("json", "bytes"):
        c = counts[kind]
        print(f"  {kind:5s} tried {sum(c.values()):6d}: 2xx {c['2xx']}, 4xx {c['4xx']}, 5xx {c['5xx']}, "
              f"closed without an answer {c['closed']}, hang {c['hang']}")
    print(f"  server alive at {counts['health']['alive']} of {sum(counts['health'].values())} checks")


if __name__ == "__main__":
    main()
