"""The benchmark's emulated machines (benchmarks/cpu_groups.py, distributed_bench.py --node-cpu-quota):
every node in a capped cgroup of its own, pinned, and nothing left behind. Needs root and cgroup v1."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))
import cpu_groups  # noqa: E402

pytestmark = pytest.mark.skipif(cpu_groups.available() is not None, reason=str(cpu_groups.available()))


def _ours() -> list[str]:
    return sorted(p.name for p in cpu_groups.CPU_ROOT.iterdir() if p.name.startswith(f"dlbench-{os.getpid()}-"))


def test_groups_cap_pin_and_clean_up():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with cpu_groups.NodeCpuGroups(0.25, 4000) as groups:
            groups.place(child.pid, 1)
            group = cpu_groups.CPU_ROOT / f"dlbench-{os.getpid()}-1"
            assert (group / "cpu.cfs_period_us").read_text().strip() == "4000"
            assert (group / "cpu.cfs_quota_us").read_text().strip() == "1000"
            assert str(child.pid) in (group / "cgroup.procs").read_text().split()
            assert os.sched_getaffinity(child.pid) == {groups.core_of(1)}
            mine = os.sched_getaffinity(0)
            groups.place_self(0)
            assert os.sched_getaffinity(0) == {groups.core_of(0)}
            groups.release_self()
            assert os.sched_getaffinity(0) == mine
        assert _ours() == []  # removed although the child still runs (moved out first)
        assert str(child.pid) in (cpu_groups.CPU_ROOT / "cgroup.procs").read_text().split()
    finally:
        child.kill()
        child.wait()
    with pytest.raises(ValueError):
        cpu_groups.NodeCpuGroups(0, 5000)


def test_distributed_bench_rows_per_quota(tiny_models):
    path = tiny_models.converted("llama", "f32")
    r = subprocess.run([sys.executable, "benchmarks/distributed_bench.py", str(path), "--nodes", "1", "2",
                        "--prompt-tokens", "4", "--gen-tokens", "2", "--node-cpu-quota", "0", "1",
                        "--latency-ms", "0", "--rate-mbit", "1000"],
                       cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr
    assert re.search(r"cpu quota 1 of a core every 5 ms per node: one thread reads [\d.]+ GB/s", r.stdout)
    rows = [[c.strip() for c in line.split("|")[1:5]] for line in r.stdout.splitlines()
            if re.match(r"\| [12] +\|", line)]
    assert [row[:2] for row in rows] == [["1", "none"], ["2", "none"], ["2", "none"], ["1", "1"], ["2", "1"],
                                         ["2", "1"]]
    assert [row[3].split(",")[0] for row in rows if row[0] == "2"] == ["loopback", "emulator 0 ms"] * 2
    leftovers = [p.name for p in cpu_groups.CPU_ROOT.iterdir() if p.name.startswith("dlbench-")
                 and not any(Path(f"/proc/{pid}").exists() for pid in [p.name.split("-")[1]])]
    assert leftovers == []
