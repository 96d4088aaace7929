"""Fuzz drivers: run many more cases than the test suite does and print tried / clean error / crash / hang.

    python benchmarks/fuzz.py worker -n 10000 [--seed 0]

Targets (the case generators live beside the tests that run a few hundred of them in CI):
  worker   random and boundary-valued frames to a `dllama-py worker` after a valid handshake
           (tests/worker_protocol.py); every 1,000 cases a real root must get correct logits from it.
Run from the repository root with the package installed, or with PYTHONPATH=src after a dev build.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def tiny_llama(directory: Path) -> Path:
    """The tests' tiny Llama (random weights), converted to F32."""
    from hf_models import build

    from dllama_py.convert import convert

    build("llama", directory / "hf")
    out = directory / "llama-f32.m"
    convert(directory / "hf", out, dtype="f32", progress=False, log=lambda *a: None)
    return out


def fuzz_worker_target(n: int, seed: int, work: Path) -> tuple[dict, list[str]]:
    import numpy as np
    from worker_protocol import fuzz_worker

    from dllama_py import Engine

    path = tiny_llama(work)
    ids = list(range(1, 21))
    with Engine(path, threads=1) as eng:
        single = eng.forward(ids)

    def real_root(worker):
        with Engine(path, threads=1, workers=[worker.address], exchange="f32") as eng:
            split = eng.forward(ids)
        if not np.abs(split - single).max() <= 1e-4 * single.std():
            raise AssertionError("the worker gave wrong logits to a real root after fuzzing")

    start = time.monotonic()

    def progress(counts):
        if counts["tried"] % 500 == 0:
            print(f"  {counts} after {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    return fuzz_worker(path, n, seed, progress=progress, check=real_root, check_every=1000)


TARGETS = {"worker": fuzz_worker_target}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("-n", "--cases", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        counts, failures = TARGETS[args.target](args.cases, args.seed, Path(tmp))
    print(f"{args.target}: tried {counts['tried']}, clean error {counts['clean']}, crash {counts['crash']}, "
          f"hang {counts['hang']} ({time.monotonic() - start:.0f} s, seed {args.seed})")
    for f in failures:
        print("  " + f)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
