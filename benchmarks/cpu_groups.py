"""One cgroup v1 CPU group per benchmark node: each node process gets a CPU quota of its own and a core
of its own where there are enough, so that N nodes on one small VM behave more like N slower PCs.

Why (distributed_bench.py --node-cpu-quota): on the 2-vCPU VM these benchmarks were written on, one
thread reads memory at ~40 GB/s and two threads together at only ~43 GB/s, and one 1B-model decode thread
alone already reads ~28 GB/s. Two nodes on that VM therefore share one memory bus that one node nearly
fills, which separate PCs do not; and they share two cores with the link emulator and anything else
running. With q = 1 each node has a core of its own and nothing is throttled. A quota q < 1 slows
every node, the 1-node baseline included, to about q of its speed: each node then emulates a slower PC
(a node at 44 tok/s becomes a ~17-22 tok/s one at q = 0.5), and N nodes draw about N·q cores, which
leaves the emulator room to run. But the kernel throttles a group only at its scheduler tick (4 ms at
HZ=250 without HRTICK), so a node that waits for the network gets the wait back out of time it would
have been throttled anyway: q < 1 hides part of the links' cost (measured in docs/distributed.md).
No quota gives each node its own memory bus: nodes that compute at the same moment still share it.

The groups also get a large cpu.shares (SHARES: 10 ordinary processes' worth), so that other jobs on
the machine (compilers, tests) do not take a node's quota away while it computes, as they cannot on a PC
of its own. A node still gets no more than its quota. The link emulator, which stands for the network
and not for any PC, goes into a group of its own with no quota and the most shares (`place_network`),
so that nodes waiting for it do not delay the packets they wait for.

Uses /sys/fs/cgroup/cpu (cgroup v1, root). Groups are named dlbench-<pid>-<k> and removed on exit.
"""

from __future__ import annotations

import os
from pathlib import Path

CPU_ROOT = Path("/sys/fs/cgroup/cpu")
SHARES = 10240  # an ordinary process has 1024
NETWORK_SHARES = 262144  # the most cgroup v1 allows


def available() -> str | None:
    """None if per-node groups can be made here, else why not."""
    if not (CPU_ROOT / "cpu.cfs_quota_us").exists():
        return f"no cgroup v1 cpu controller at {CPU_ROOT}"
    if not os.access(CPU_ROOT, os.W_OK):
        return f"{CPU_ROOT} is not writable (needs root)"
    return None


class NodeCpuGroups:
    """Per-node CPU groups. `place(pid, k)` puts process pid (all its threads) into node k's group,
    capped at quota·period every period, and pins it to core k mod the cores this process may use.
    `place_self(k)` does it to this process (the root runs in-process) and `release_self()` undoes it.
    A context manager: on exit every group is removed (processes still in one are moved out first)."""

    def __init__(self, quota: float, period_us: int, pin: bool = True):
        if not 0 < quota <= 64 or not 1000 <= period_us <= 1_000_000:
            raise ValueError("quota: 0 < q <= 64 cores; period: 1000..1000000 us")
        self.quota, self.period_us, self.pin = quota, period_us, pin
        self.cores = sorted(os.sched_getaffinity(0))
        self.groups: dict[int, Path] = {}
        self._own_affinity = None

    def core_of(self, k: int) -> int:
        return self.cores[k % len(self.cores)]

    def _group(self, k: int) -> Path:
        if k not in self.groups:
            g = CPU_ROOT / f"dlbench-{os.getpid()}-{k}"
            g.mkdir(exist_ok=True)
            (g / "cpu.cfs_period_us").write_text(str(self.period_us))
            (g / "cpu.cfs_quota_us").write_text(str(round(self.quota * self.period_us)))
            (g / "cpu.shares").write_text(str(SHARES))
            self.groups[k] = g
        return self.groups[k]

    def place(self, pid: int, k: int):
        (self._group(k) / "cgroup.procs").write_text(str(pid))
        if self.pin:
            for tid in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(tid), {self.core_of(k)})

    def place_network(self, pid: int):
        """The link emulator: no quota, no pinning, more shares than any node."""
        g = self.groups.get("network")
        if g is None:
            g = CPU_ROOT / f"dlbench-{os.getpid()}-network"
            g.mkdir(exist_ok=True)
            (g / "cpu.shares").write_text(str(NETWORK_SHARES))
            self.groups["network"] = g
        (g / "cgroup.procs").write_text(str(pid))

    def place_self(self, k: int):
        """Threads started later (the root's thread pool) inherit the group and the calling thread's
        core; threads this process already has are moved to the group but keep their affinity."""
        self._own_affinity = os.sched_getaffinity(0)
        (self._group(k) / "cgroup.procs").write_text(str(os.getpid()))
        if self.pin:
            os.sched_setaffinity(0, {self.core_of(k)})

    def release_self(self):
        (CPU_ROOT / "cgroup.procs").write_text(str(os.getpid()))
        if self._own_affinity is not None:
            os.sched_setaffinity(0, self._own_affinity)
            self._own_affinity = None

    def throttled_share(self) -> dict:
        """Per group: the share of its periods in which it ran out of quota (cpu.stat)."""
        out = {}
        for k, g in self.groups.items():
            stat = dict(line.split() for line in (g / "cpu.stat").read_text().splitlines())
            periods = int(stat.get("nr_periods", 0))
            out[k] = int(stat.get("nr_throttled", 0)) / periods if periods else 0.0
        return out

    def close(self):
        if self._own_affinity is not None or str(os.getpid()) in self._pids_anywhere():
            self.release_self()
        for g in self.groups.values():
            for pid in (g / "cgroup.procs").read_text().split():
                try:
                    (CPU_ROOT / "cgroup.procs").write_text(pid)
                except OSError:
                    pass  # it exited meanwhile
            try:
                g.rmdir()
            except OSError:
                pass
        self.groups.clear()

    def _pids_anywhere(self) -> set[str]:
        return {pid for g in self.groups.values() for pid in (g / "cgroup.procs").read_text().split()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
