"""The server under a few hundred fuzzed requests (benchmarks/fuzz_server.py: random JSON bodies and raw
bytes): each is answered with an HTTP status, never a 5xx, a dropped connection or a hang, and the
server is alive afterwards. `python benchmarks/fuzz_server.py -n 10000` runs the long version."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from fuzz_server import fuzz_server, start_tiny_server  # noqa: E402


def test_every_fuzzed_request_is_answered(tmp_path):
    engine, server = start_tiny_server(tmp_path)
    failures = []

    def record(i, kind, data, outcome):
        if outcome not in ("2xx", "4xx"):
            failures.append((i, kind, outcome, data[:300]))

    try:
        # 30 s per case: CI machines can be busy; a real hang (no answer at all) still fails.
        counts = fuzz_server(server.host, server.port, n=300, seed=1234, timeout=30.0, on_case=record)
    finally:
        server.stop()
        engine.close()
    assert not failures, failures[:5]
    assert counts["health"] == {"alive": 1}
    assert counts["json"]["2xx"] > 10 and counts["json"]["4xx"] > 50 and counts["bytes"]["4xx"] > 20
