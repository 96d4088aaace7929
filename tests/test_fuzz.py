"""Fuzzing in CI: corrupted .m files (each loaded, and run, in a process of its own) and bad checkpoints
must end in a clean error or a working model: no signal, no uncaught exception, nothing over 10 s.
benchmarks/fuzz_files.py runs the same targets at 10,000+ cases; `--case N --seed S --keep DIR` replays one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

FUZZ = Path(__file__).parent.parent / "benchmarks" / "fuzz_files.py"
SEED = int(os.environ.get("DLLAMA_FUZZ_SEED", "20240601"))  # fixed, so that a CI failure replays


@pytest.mark.parametrize("target,cases", [("loader", 1000), ("converter", 400)])
def test_fuzz(target, cases, tmp_path):
    run = subprocess.run([sys.executable, str(FUZZ), target, "-n", str(cases), "--seed", str(SEED), "--jobs", "2",
                          "--json", "--keep", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    tally = json.loads(run.stdout)[target]
    assert tally["tried"] == cases
    assert tally["crash"] == 0 and tally["hang"] == 0, "\n".join(tally["examples"])
    # the fuzzer reaches past the header checks: some variants still load and run, most are refused
    assert tally["accepted"] > cases // 20 and tally["clean"] > cases // 2
