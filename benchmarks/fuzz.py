"""Fuzz driver: runs each target's fuzzer and prints its counts.

    PYTHONPATH=src python benchmarks/fuzz.py                 # every target, 10,000 cases each
    PYTHONPATH=src python benchmarks/fuzz.py server -n 500

A target is an entry of TARGETS: a function (n, seed) that runs n cases and prints what it found.
"""

from __future__ import annotations

import argparse
import sys
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def server(n: int, seed: int):
    import fuzz_server

    counts = fuzz_server.run(n, seed)
    for kind in ("json", "bytes"):
        c = counts[kind]
        print(f"server/{kind}: tried {sum(c.values())}, answered 2xx {c['2xx']} 4xx {c['4xx']}, 5xx {c['5xx']}, "
              f"closed without an answer {c['closed']}, hang {c['hang']}")
    print(f"server: alive at {counts['health']['alive']} of {sum(counts['health'].values())} checks")


def files(target: str, n: int, seed: int):
    """A target of fuzz_files.py: corrupted .m files (loader) or checkpoints (converter), one process each."""
    import fuzz_files

    fuzz_files.print_counts(target, fuzz_files.run(target, n, seed, progress=True))


TARGETS = {"server": server, "loader": partial(files, "loader"), "converter": partial(files, "converter")}


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
