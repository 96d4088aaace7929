"""`dllama-py list` and `-m NAME`: sizes come from the converter's own plan (a real conversion has exactly
that size and per-node memory), pulled copies are found by name or repo id, and a model not pulled yet
gets the exact pull command."""

from __future__ import annotations

import json
import shutil

import pytest

from dllama_py.architectures import read_layout
from dllama_py.catalog import KNOWN_MODELS, model_sizes, pulled_path, resolve_model
from dllama_py.cli import main
from dllama_py.convert import convert
from dllama_py.node_memory import node_memory


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "dllama_py"


@pytest.mark.parametrize("name", ["glm4_moe_air", "glm4_moe_lite", "llama"])
def test_sizes_are_those_of_a_real_conversion(tiny_models, tmp_path, name):
    hf_dir = tiny_models.hf(name)[0]
    config = json.loads((hf_dir / "config.json").read_text())
    config["num_nextn_predict_layers"] = 0  # the tiny checkpoints declare an MTP layer they do not hold
    sizes = model_sizes(config, dtypes=("q40", "q80"), max_nodes=2)
    for dtype in ("q40", "q80"):
        out = tmp_path / f"{dtype}.m"
        convert(hf_dir, out, dtype=dtype, progress=False, log=lambda *a: None)
        assert sizes.file_bytes[dtype] == out.stat().st_size
    layout = read_layout(tmp_path / "q40.m")
    context = min(config["max_position_embeddings"], 4096)
    for n_nodes, ram in enumerate(sizes.ram_per_node, 1):
        assert ram == max(node_memory(layout, i, n_nodes, context, kv_f16=True).total for i in range(n_nodes))
    from safetensors.numpy import load_file

    state = load_file(str(hf_dir / "model.safetensors"))  # MTP-free tiny models: every tensor is used
    assert sizes.total_params == sum(t.size for t in state.values())


def test_list_shows_known_models_and_which_are_here(tiny_models, cache, capsys):
    here = pulled_path("Qwen/Qwen3-0.6B", "q80")
    here.parent.mkdir(parents=True)
    shutil.copy(tiny_models.converted("llama", "q80"), here)
    assert main(["list", "qwen3-0.6b"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("Qwen3-0.6B "))
    assert "Qwen/Qwen3-0.6B" in row and "qwen3" in row and row.rstrip().endswith("Qwen3-0.6B-q80.m")
    assert main(["list", "GLM-4.7"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("GLM-4.7-Flash "))
    assert "zai-org/GLM-4.7-Flash" in row and "(3.9B)" in row and row.rstrip().endswith("-")


def test_every_known_model_plans(tmp_path):
    names = [m.name for m in KNOWN_MODELS]
    assert len(set(names)) == len(names)
    for name in ("GLM-4-9B-0414", "GLM-Z1-9B-0414", "glm-4-9b-chat-hf", "GLM-4-32B-0414", "GLM-4.5-Air",
                 "GLM-4.5-Air-Base", "GLM-4.5", "GLM-4.6", "INTELLECT-3", "GLM-4.7-Flash", "GLM-4.5-Air-FP8",
                 "Qwen3-30B-A3B", "Llama-3.1-8B-Instruct"):
        assert name in names
    from dllama_py.convert import plan_file

    for m in KNOWN_MODELS:  # every config converts to a file the loader's rules accept
        assert plan_file(m.config, "q40").size > 0


def test_model_names_resolve_to_pulled_copies_or_the_pull_command(tiny_models, cache, capsys):
    with pytest.raises(FileNotFoundError, match=r"GLM-4.5-Air is not downloaded yet; get it with: "
                                                r"dllama-py pull zai-org/GLM-4.5-Air$"):
        resolve_model("GLM-4.5-Air")
    with pytest.raises(FileNotFoundError, match=r"dllama-py pull someone/Some-Model$"):
        resolve_model("someone/Some-Model")
    assert main(["generate", "-m", "zai-org/GLM-4.5-Air", "hi"]) == 1
    assert "dllama-py pull zai-org/GLM-4.5-Air" in capsys.readouterr().err
    path = pulled_path("zai-org/GLM-4.5-Air", "q40")
    path.parent.mkdir(parents=True)
    shutil.copy(tiny_models.converted("glm4_moe_air", "q40"), path)
    for arg in ("GLM-4.5-Air", "glm-4.5-air", "zai-org/GLM-4.5-Air"):
        assert resolve_model(arg) == path
    assert main(["inspect", "GLM-4.5-Air"]) == 0
    assert str(path) in capsys.readouterr().out
