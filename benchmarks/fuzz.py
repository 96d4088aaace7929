"""Fuzz driver: runs each target's fuzzer and prints its counts.

    PYTHONPATH=src python benchmarks/fuzz.py                 # every target, 10,000 cases each
    PYTHONPATH=src python benchmarks/fuzz.py server -n 500
    PYTHONPATH=src python benchmarks/fuzz.py worker          # frames to a `dllama-py worker` (tests/worker_protocol.py)

A target is an entry of TARGETS: a function (n, seed) that runs n cases and prints what it found.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent / "tests"))  # worker_protocol, hf_models


def server(n: int, seed: int):
    import fuzz_server

    counts = fuzz_server.run(n, seed)
    for kind in ("json", "bytes"):
        c = counts[kind]
        print(f"server/{kind}: tried {sum(c.values())}, answered 2xx {c['2xx']} 4xx {c['4xx']}, 5xx {c['5xx']}, "
              f"closed without an answer {c['closed']}, hang {c['hang']}")
    print(f"server: alive at {counts['health']['alive']} of {sum(counts['health'].values())} checks")


def worker(n: int, seed: int):
    """Random and boundary-valued frames after a valid handshake; every 1,000 cases a real root must get
    the single-node logits from the same worker."""
    import numpy as np
    from hf_models import build
    from worker_protocol import fuzz_worker

    from dllama_py import Engine
    from dllama_py.convert import convert

    with tempfile.TemporaryDirectory() as tmp:
        build("llama", Path(tmp) / "hf")
        path = Path(tmp) / "llama-f32.m"
        convert(Path(tmp) / "hf", path, dtype="f32", progress=False, log=lambda *a: None)
        ids = list(range(1, 21))
        with Engine(path, threads=1) as eng:
            single = eng.forward(ids)

        def real_root(w):
            with Engine(path, threads=1, workers=[w.address], exchange="f32") as eng:
                if not np.abs(eng.forward(ids) - single).max() <= 1e-4 * single.std():
                    raise AssertionError("the worker gave a real root wrong logits after fuzzing")

        start = time.monotonic()

        def progress(counts):
            if counts["tried"] % 1000 == 0:
                print(f"  {counts} after {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

        counts, failures = fuzz_worker(path, n, seed, progress=progress, check=real_root, check_every=1000)
    print(f"worker: tried {counts['tried']}, clean error {counts['clean']}, crash {counts['crash']}, "
          f"hang {counts['hang']} ({time.monotonic() - start:.0f} s, seed {seed})")
    for f in failures:
        print("  " + f)


def files(target: str, n: int, seed: int):
    """A target of fuzz_files.py: corrupted .m files (loader) or checkpoints (converter), one process each."""
    import fuzz_files

    fuzz_files.print_counts(target, fuzz_files.run(target, n, seed, progress=True))


TARGETS = {"server": server, "loader": partial(files, "loader"), "converter": partial(files, "converter"),
           "worker": worker}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("targets", nargs="*", help=f"of {', '.join(TARGETS)} (default: all)")
    ap.add_argument("-n", type=int, default=10000, help="cases per target (default 10,000)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        ap.error(f"unknown target(s) {', '.join(sorted(unknown))}; known: {', '.join(TARGETS)}")
    for name in args.targets or TARGETS:
        TARGETS[name](args.n, args.seed)


if __name__ == "__main__":
    main()
