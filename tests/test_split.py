"""--split: the share rule (cpp/partition.h, UnitSplit in cpp/blocks/block.h) as Python sees it through the
bindings, the checks of the weights, the CLI's messages, and --split auto's choice. The parity of uneven
splits is in tests/test_shapes.py and tests/test_distributed.py."""

from __future__ import annotations

import numpy as np
import pytest
from hf_models import N_PREFILL
from test_distributed import Workers

from dllama_py import Engine, _core
from dllama_py.architectures import read_layout
from dllama_py.cli import main
from dllama_py.cluster import auto_split
from dllama_py.engine import model_config
from dllama_py.node_memory import node_memory

Q40 = _core.FloatType.Q40


def shares(n_units: int, split: list[float]) -> list[tuple[int, int]]:
    return [_core.node_share(n_units, node, len(split), split) for node in range(len(split))]


@pytest.mark.parametrize("seed", range(20))
def test_weighted_shares_are_contiguous_and_proportional(seed):
    rng = np.random.default_rng(seed)
    n_nodes, n_units = int(rng.integers(2, 9)), int(rng.integers(1, 100_000))
    split = [float(w) for w in np.float32(rng.uniform(0.05, 20, n_nodes))]  # as the wire carries them
    got = shares(n_units, split)
    assert got[0][0] == 0 and got[-1][1] == n_units
    assert all(a[1] == b[0] for a, b in zip(got, got[1:]))
    for (begin, end), w in zip(got, split):
        assert abs((end - begin) - n_units * w / sum(split)) < 1 + 1e-9


def test_equal_weights_are_the_equal_split():
    for n_nodes in range(1, 9):
        for n_units in (1, 7, 100, 151_936):
            equal = [(n_units * k // n_nodes, n_units * (k + 1) // n_nodes) for k in range(n_nodes)]
            assert shares(n_units, [1.0] * n_nodes) == shares(n_units, [2.5] * n_nodes) == equal
            assert [_core.node_share(n_units, k, n_nodes) for k in range(n_nodes)] == equal


def test_shares_are_whole_groups():
    """Q40 o projection with heads of 48 columns: a share may only end every 2 heads (96 columns = 3 blocks)."""
    split = [3.0, 1.0, 2.0]
    got = [_core.unit_share("o", "heads", 24, 48, Q40, k, 3, split) for k in range(3)]
    assert got == [(0, 12), (12, 16), (16, 24)]  # 12 groups of 2 heads: 6, 2, 4 groups
    assert all(begin * 48 % 32 == 0 for begin, _ in got)


def test_a_node_without_a_group_is_refused_naming_what_works():
    # 4 groups of 2 heads; weights 10,1,1 leave node 1 none (its 1/12 of 4 groups rounds to nothing).
    with pytest.raises(ValueError, match=r"cannot split o across 3 nodes: o \(q40\) can only be cut between 32-value "
                                         r"blocks .* after every 2 of its 8 heads of 48 columns; split 10,1,1 gives "
                                         r"node 1 none of them: every node's weight must be at least 1/4 of the sum"):
        _core.unit_share("o", "heads", 8, 48, Q40, 0, 3, [10, 1, 1])
    # Fewer groups than nodes: no weights help, so the equal split's limit is named.
    with pytest.raises(ValueError, match=r"after every 2 of its 4 heads of 48 columns; it runs on 1 to 2 nodes"):
        _core.unit_share("o", "heads", 4, 48, Q40, 0, 3, [1, 1, 2])


BAD_WEIGHTS = {
    "too few": ([1.0, 2.0], "split has 2 weights for 3 nodes (one per node, root first)"),
    "too many": ([1.0] * 4, "split has 4 weights for 3 nodes"),
    "zero": ([1.0, 0.0, 1.0], "split weight of node 1 is 0, expected a number above 0 and at most 1e6"),
    "negative": ([-1.0, 1.0, 1.0], "split weight of node 0 is -1, expected"),
    "NaN": ([1.0, 1.0, float("nan")], "split weight of node 2 is nan, expected"),
    "infinite": ([float("inf"), 1.0, 1.0], "split weight of node 0 is inf, expected"),
    "huge": ([2e6, 1.0, 1.0], "split weight of node 0 is 2e+06, expected"),
}


@pytest.mark.parametrize("case", BAD_WEIGHTS, ids=list(BAD_WEIGHTS))
def test_bad_weights_are_refused(case):
    weights, message = BAD_WEIGHTS[case]
    with pytest.raises(ValueError) as e:
        _core.check_split_weights(3, weights)
    assert message in str(e.value)


BAD_CLI_SPLITS = {
    "2,1,1,1": "--split 2,1,1,1: split has 4 weights for 3 nodes (one per node, root first)",
    "2,1": "--split 2,1: split has 2 weights for 3 nodes",
    "1,0,1": "--split 1,0,1: split weight of node 1 is 0, expected a number above 0 and at most 1e6",
    "1,-2,1": "--split 1,-2,1: split weight of node 1 is -2, expected",
    "nan,1,1": "--split nan,1,1: split weight of node 0 is nan, expected",
    "2,one,1": "--split 2,one,1: expected one weight per node, root first (e.g. 2,1,1), or auto; got '2,one,1'",
    "2,,1": "--split 2,,1: expected one weight per node",
}


@pytest.mark.parametrize("text", BAD_CLI_SPLITS)
@pytest.mark.parametrize("command", ["generate", "bench"])
def test_bad_split_on_the_command_line_is_one_line(capsys, text, command):
    """Checked before the model or any worker is touched (the workers here do not exist)."""
    args = [command, "-m", "/nonexistent.m", "--workers", "127.0.0.1:1", "127.0.0.1:2", "--split", text]
    assert main(args + (["hello"] if command == "generate" else [])) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"dllama-py: error: {BAD_CLI_SPLITS[text]}")


def test_split_auto_needs_workers(capsys):
    assert main(["generate", "-m", "/nonexistent.m", "--split", "auto", "hello"]) == 1
    assert capsys.readouterr().err == "dllama-py: error: --split auto: auto needs workers (--workers) to weigh; " \
                                      "or give weights, e.g. 2,1,1\n"


def test_engine_split_errors(tiny_models):
    path = tiny_models.converted("llama", "f32")
    with pytest.raises(ValueError, match=r"split has 2 weights for 1 node \(one per node, root first\)"):
        Engine(path, threads=1, split=[2, 1])
    with pytest.raises(ValueError, match=r"expected one weight per node"):
        Engine(path, threads=1, split="fast,slow")
    with pytest.raises(ValueError, match="split auto needs workers"):
        Engine(path, threads=1, split="auto")


def test_inspect_shows_each_node_of_a_split(tiny_models, capsys):
    path = tiny_models.converted("llama", "q40")
    layout = read_layout(path)
    cfg = model_config(layout, None)
    assert main(["inspect", str(path), "--split", "3,1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  2 nodes, split 3,1: ")]
    assert len(lines) == 1
    root, worker = (node_memory(layout, k, 2, cfg.seq_len, cfg.kv_f16, split=[3, 1]) for k in range(2))
    assert root.weights > 2 * worker.weights  # the root holds about 3/4 of the split weights
    from dllama_py.cli import _fmt_bytes

    assert lines[0].endswith(f", node 1 {_fmt_bytes(worker.total)}")


# --- --split auto ------------------------------------------------------------------------------------

def test_auto_split_weighs_by_bandwidth_within_free_ram(tiny_models):
    layout = read_layout(tiny_models.converted("llama", "f32"))
    cfg = model_config(layout, 64)
    plenty = [1 << 40] * 3
    chosen = auto_split(layout, cfg, [40e9, 20e9, 41e9], plenty)
    assert chosen.weights == [1.0, 0.5, 1.0] and chosen.capped == []  # multiples of 0.05 of the fastest
    assert chosen.line(["root", "a:1", "b:2"]) == "split auto: 1,0.5,1 (read GB/s: root 40.0, a:1 20.0, b:2 41.0)"

    equal = [node_memory(layout, k, 3, cfg.seq_len, cfg.kv_f16).total for k in range(3)]
    room = [plenty[0], int(equal[1] * 0.8), plenty[2]]  # node 1 has room for 80% of an equal share
    chosen = auto_split(layout, cfg, [40e9, 40e9, 40e9], room)
    need = [node_memory(layout, k, 3, cfg.seq_len, cfg.kv_f16, split=chosen.weights).total for k in range(3)]
    assert chosen.capped == [1] and need[1] <= room[1] and chosen.weights[1] < 1.0
    assert "lowered to fit free RAM: a:1" in chosen.line(["root", "a:1", "b:2"])

    with pytest.raises(ValueError, match=r"split auto: the model does not fit the nodes' free RAM: node \d needs"):
        auto_split(layout, cfg, [40e9] * 3, [1000] * 3)


def test_engine_with_split_auto(tiny_models, capfd):
    """Engine(split="auto") probes the worker, prints its choice on one line and splits by it."""
    path = tiny_models.converted("llama", "f32")
    ids = tiny_models.hf("llama")[1]
    with Engine(path, threads=1) as eng:
        single = eng.forward(ids[:N_PREFILL])
    workers = Workers(1)
    try:
        with Engine(path, threads=1, workers=workers.addresses, exchange="f32", split="auto") as eng:
            assert len(eng.split) == 2 and max(eng.split) == 1.0
            split = eng.forward(ids[:N_PREFILL])
    finally:
        workers.close()
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("split auto: ")]
    assert len(lines) == 1 and "(read GB/s: root " in lines[0] and f", {workers.addresses[0]} " in lines[0]
    assert lines[0].startswith(f"split auto: {eng.split[0]:g},{eng.split[1]:g} ")
    assert np.abs(split - single).max() <= 1e-4 * single.std()
