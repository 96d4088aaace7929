"""The command line's conveniences: --version, --tokenizer, progress bars on a terminal, inspect's memory per
node, and the distributed benchmark against an installed package."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest
from chat_model import make_chat_model

import dllama_py
from dllama_py import Engine, _core
from dllama_py.architectures import read_layout
from dllama_py.cli import _fmt_bytes, build_parser, main
from dllama_py.engine import model_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_chat_model(tmp_path_factory.mktemp("ux_model"))


def on_terminal(args: list[str], code: str = "import sys, dllama_py.cli as c; sys.exit(c.main(sys.argv[1:]))") -> str:
    """What a command prints on a terminal (stdout and stderr), once it has exited with 0."""
    p = pexpect.spawn(sys.executable, ["-c", code, *args], env=dict(os.environ, TERM="xterm"), encoding="utf-8",
                      timeout=120, dimensions=(24, 160))
    p.expect(pexpect.EOF)
    p.close()
    assert p.exitstatus == 0, p.before
    return p.before


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == (f"dllama-py {dllama_py.__version__} (core built for {_core.cpu_features()}; "
                                       f"Python {sys.version.split()[0]})\n")


def test_tokenizer_option_on_every_command_with_a_model(model, tmp_path, capsys):
    for command in (["generate", "-m", "m.m", "hi"], ["chat", "-m", "m.m"], ["serve", "-m", "m.m"],
                    ["bench", "-m", "m.m"]):
        assert build_parser().parse_args(command + ["--tokenizer", "t.json"]).tokenizer == "t.json"

    assert main(["generate", "-m", str(model), "hello", "-n", "8", "--temperature", "0", "-q"]) == 0
    expected = capsys.readouterr().out
    bare = tmp_path / "bare.m"  # the model without its tokenizer bundle beside it
    bare.symlink_to(model)
    assert main(["generate", "-m", str(bare), "hello", "-n", "2", "-q"]) == 1
    assert "has no tokenizer bundle" in capsys.readouterr().err
    hf = model.parent / "hf"
    for tokenizer in (f"{model}.tokenizer.json", hf, hf / "tokenizer.json"):  # a bundle, a checkpoint, its file
        assert main(["generate", "-m", str(bare), "hello", "-n", "8", "--temperature", "0", "-q",
                     "--tokenizer", str(tokenizer)]) == 0
        assert capsys.readouterr().out == expected

    assert main(["bench", "-m", str(bare), "--tokenizer", str(tmp_path / "missing.json")]) == 1
    assert "tokenizer not found: " + str(tmp_path / "missing.json") in capsys.readouterr().err
    (tmp_path / "other.json").write_text('{"version": "1.0", "model": {}}')
    assert main(["generate", "-m", str(bare), "hi", "--tokenizer", str(tmp_path / "other.json")]) == 1
    assert "is not a valid tokenizer bundle or Hugging Face tokenizer.json" in capsys.readouterr().err


def test_tokenizer_of_a_larger_vocabulary_is_refused(model, tmp_path):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(model.parent / "hf" / "tokenizer.json"))
    tok.add_special_tokens([f"<extra_{i}>" for i in range(100)])
    tok.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"has 359 tokens but .*tiny.m has a vocabulary of 320: not this model's"):
        Engine(model, tokenizer=tmp_path / "tokenizer.json")


def test_convert_progress_ends_at_every_tensor_with_an_eta(model, tmp_path):
    out = on_terminal(["convert", str(model.parent / "hf"), "-o", str(tmp_path / "m.m")])
    n_tensors = int(re.search(r": (\d+) tensors", out).group(1))
    frames = [f for f in out.split("\r") if "tensors]" in f]
    size = (tmp_path / "m.m").stat().st_size
    assert frames[-1].startswith("m.m: 100%|")
    assert f"{n_tensors}/{n_tensors} tensors]" in frames[-1]
    assert f"{size / 1e6:.2f}M/{size / 1e6:.2f}M" in frames[-1]
    assert all(re.search(r"\[\d\d:\d\d<\d\d:\d\d", f) for f in frames)  # elapsed<remaining on every frame


def test_loading_progress(model, tmp_path):
    calls = []
    with Engine(model, load_progress=lambda done, total: calls.append((done, total))):
        pass
    weights, _ = measure(model, 0, 1)
    assert calls[-1] == (weights, weights)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)

    def interrupt(done, total):
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        Engine(model, load_progress=interrupt)

    # A load longer than the delay shows a bar on the terminal that ends at every byte.
    out = on_terminal(["generate", "-m", str(model), "hi", "-n", "1", "-q"],
                      code="import sys, dllama_py.cli as c; c.LOAD_PROGRESS_DELAY_S = 0; sys.exit(c.main(sys.argv[1:]))")
    assert f"loading {model}: 100%|" in out
    assert f"{weights / 1e6:.2f}M/{weights / 1e6:.2f}M" in out
    assert "loading" not in on_terminal(["generate", "-m", str(model), "hi", "-n", "1", "-q"])  # a quick load: no bar


def measure(path: Path, node: int, n_nodes: int, seq_len: int | None = None) -> tuple[int, int]:
    """(weight bytes, KV cache bytes) of a node's share, as the C++ graph builds it."""
    layout = read_layout(path)
    tensors = [_core.TensorInfo(t.spec.name, _core.FloatType(int(t.dtype)), t.spec.rows, t.spec.cols, t.offset)
               for t in layout.tensors]
    return _core.measure_node_share(str(path), model_config(layout, seq_len), tensors, node, n_nodes)


def test_inspect_shows_memory_per_node(tiny_models, capsys):
    path = tiny_models.converted("glm4_moe_air", "q40")  # head_dim 48: three nodes would cut Q40 blocks
    assert main(["inspect", str(path), "--max-seq-len", "256"]) == 0
    out = capsys.readouterr().out
    embedding = next(t.nbytes for t in read_layout(path).tensors if t.spec.name == "embedding")
    for n_nodes in (1, 2):
        shares = [measure(path, node, n_nodes, 256) for node in range(n_nodes)]
        root = _fmt_bytes(sum(shares[0]) + embedding)
        line = re.search(rf"  {n_nodes} nodes? ?: (.*)", out).group(1)
        assert line.startswith(f"root {root} ({_fmt_bytes(shares[0][0])} weights, {_fmt_bytes(shares[0][1])} KV cache")
        if n_nodes > 1:
            assert line.endswith(f"each worker {_fmt_bytes(sum(shares[1]))}")
    for n_nodes in (3, 4):
        message = (f"cannot split layers.0.attn.o across {n_nodes} nodes: layers.0.attn.o (q40) can only be cut "
                   "between 32-value blocks of its 192 input columns, i.e. after every 2 of its 4 heads of 48 columns")
        with pytest.raises(ValueError, match=re.escape(message)):
            measure(path, 0, n_nodes, 256)
        assert f"  {n_nodes} nodes: {message}" in out
    assert "at a context of 256" in out


def test_distributed_bench_runs_against_the_installed_package(tiny_models, tmp_path):
    """In a fresh clone src/ has no compiled core: the benchmark and its workers must use the installed
    package (here: the one these tests import, linked into a site directory of its own)."""
    clone = tmp_path / "clone"
    shutil.copytree(REPO / "benchmarks", clone / "benchmarks", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "src" / "dllama_py", clone / "src" / "dllama_py",
                    ignore=shutil.ignore_patterns("_core*", "__pycache__"))
    site = tmp_path / "site"
    site.mkdir()
    (site / "dllama_py").symlink_to(Path(dllama_py.__file__).parent)
    path = tiny_models.converted("llama", "f32")
    r = subprocess.run([sys.executable, "benchmarks/distributed_bench.py", str(path), "--nodes", "1", "2",
                        "--prompt-tokens", "4", "--gen-tokens", "2"], cwd=clone, capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=str(site)), timeout=120)
    assert r.returncode == 0, r.stderr
    rows = [line for line in r.stdout.splitlines() if re.match(r"\| [12] +\|", line)]
    assert len(rows) == 2 and "loopback" in rows[1]


@pytest.mark.parametrize("flag, value", [("--draft-tokens", "0"), ("--max-seq-len", "-3"), ("--body-timeout", "nan"),
                                         ("--header-timeout", "-1"), ("--header-timeout", "abc")])
def test_bad_option_values_are_one_line_errors_naming_the_option(flag, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(["serve", flag, value])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}" in error and "Traceback" not in error
