from __future__ import annotations

from pathlib import Path

import pytest

from hf_models import build, reference_logits


class TinyModels:
    """Builds each tiny HF model and its .m conversions once per test session."""

    def __init__(self, root: Path):
        self.root = root
        self._built: dict[str, tuple[Path, list[int], object]] = {}
        self._converted: dict[tuple[str, str], Path] = {}

    def hf(self, name: str):
        """(checkpoint dir, token ids, reference logits [24, vocab])."""
        if name not in self._built:
            directory = self.root / name
            model, ids = build(name, directory)
            self._built[name] = (directory, ids, reference_logits(model, ids))
        return self._built[name]

    def converted(self, name: str, dtype: str) -> Path:
        key = (name, dtype)
        if key not in self._converted:
            from dllama_py.convert import convert

            directory = self.hf(name)[0]
            out = self.root / f"{name}-{dtype}.m"
            convert(directory, out, dtype=dtype, progress=False, log=lambda *a: None)
            self._converted[key] = out
        return self._converted[key]


@pytest.fixture(scope="session", autouse=True)
def worker_cache(tmp_path_factory):
    """Workers started by tests keep their weight slices here, not in the user's cache."""
    import os

    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> TinyModels:
    return TinyModels(tmp_path_factory.mktemp("tiny_models"))


# (model, dtype, nodes) -> thread counts, runs, worst max error / std of the reference, worst argmax
# agreement; filled by the parity tests through record_parity, shown at the end of the run.
PARITY_FIGURES: dict[tuple[str, str, int], tuple[set[int], int, float, float]] = {}


def record_parity(model: str, dtype: str, threads: int, nodes: int, rel: float, agree: float):
    seen, runs, worst, lowest = PARITY_FIGURES.get((model, dtype, nodes), (set(), 0, 0.0, 1.0))
    PARITY_FIGURES[model, dtype, nodes] = (seen | {threads}, runs + 1, max(worst, rel), min(lowest, agree))


def _ranges(values: set[int]) -> str:
    """{1, 2, 3, 5} -> "1-3,5"."""
    runs: list[list[int]] = []
    for v in sorted(values):
        if runs and v == runs[-1][1] + 1:
            runs[-1][1] = v
        else:
            runs.append([v, v])
    return ",".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


# Other figures tests measure, by section title, shown at the end of the run (real-weights quality, pull's disk).
MEASURED: dict[str, list[str]] = {}


def pytest_terminal_summary(terminalreporter):
    for title, lines in MEASURED.items():
        terminalreporter.section(title)
        for line in lines:
            terminalreporter.write_line(line)
    if not PARITY_FIGURES:
        return
    terminalreporter.section("logits against transformers (worst max |error| / std of reference, argmax agreement)")
    terminalreporter.write_line(f"{'model':24s} {'dtype':5s} {'nodes':>5s} {'threads':>8s} {'runs':>5s} {'error':>9s} {'agree':>6s}")
    for (name, dtype, nodes), (threads, runs, rel, agree) in sorted(PARITY_FIGURES.items()):
        terminalreporter.write_line(f"{name:24s} {dtype:5s} {nodes:5d} {_ranges(threads):>8s} {runs:5d} {rel:9.2e} {agree:6.0%}")
