"""Checkpoints laid out the way published ones are: bf16 shards with an index, the older top-level
config keys (rope_theta, partial_rotary_factor), and a multi-token-prediction layer after the last
layer. They must convert, skip the MTP layer (saying so), and match transformers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hf_models import reference_logits
from safetensors.torch import save_file

from dllama_py import Engine
from dllama_py.convert import convert
from dllama_py.tokenizer import Tokenizer, bundle_path


def publish(model, directory, config_edits: dict, eos_ids: list[int]):
    """Saves `model` as bf16 shards + index with an extra MTP layer and old-style config keys."""
    from safetensors.torch import load_file

    model.save_pretrained(directory.with_name("saved"))  # per-expert tensor names, as published
    saved = load_file(str(directory.with_name("saved") / "model.safetensors"))
    directory.mkdir()
    state = {k: v.to(torch.bfloat16).contiguous() for k, v in saved.items()}
    n_layers = model.config.num_hidden_layers
    hidden = model.config.hidden_size
    mtp = f"model.layers.{n_layers}."
    state |= {mtp + "eh_proj.weight": torch.randn(hidden, 2 * hidden, dtype=torch.bfloat16),
              mtp + "enorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
              mtp + "hnorm.weight": torch.ones(hidden, dtype=torch.bfloat16),
              mtp + "shared_head.norm.weight": torch.ones(hidden, dtype=torch.bfloat16),
              mtp + "input_layernorm.weight": torch.ones(hidden, dtype=torch.bfloat16)}
    names = sorted(state)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        fname = f"model-{i:05d}-of-00002.safetensors"
        save_file({n: state[n] for n in shard}, str(directory / fname), metadata={"format": "pt"})
        weight_map |= {n: fname for n in shard}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    config = model.config.to_dict()
    rope = config.pop("rope_parameters")
    config |= {"rope_theta": rope["rope_theta"], "num_nextn_predict_layers": 1, "eos_token_id": eos_ids,
               "torch_dtype": "bfloat16"} | config_edits
    if "partial_rotary_factor" in rope:
        config["partial_rotary_factor"] = rope["partial_rotary_factor"]
    (directory / "config.json").write_text(json.dumps(config))
    # A tokenizer, so that the eos ids travel into the bundle.
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models

    HFTokenizer(models.WordLevel({"a": 0, "b": 1, "<unk>": 2}, unk_token="<unk>")).save(str(directory / "tokenizer.json"))


@pytest.mark.parametrize("name", ["glm4_moe_air", "glm4_moe_lite"])
def test_published_layout_converts_and_matches(tiny_models, tmp_path, name):
    hf_dir, ids, _ = tiny_models.hf(name)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    with torch.no_grad():  # the reference sees the same bf16-rounded weights as the checkpoint
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    ref = reference_logits(model, ids)
    published = tmp_path / "published"
    publish(model, published, {}, eos_ids=[1, 2, 3])
    assert "rope_parameters" not in json.loads((published / "config.json").read_text())

    messages = []
    out = tmp_path / "model.m"
    report = convert(published, out, dtype="f32", progress=False, log=messages.append)
    n_layers = model.config.num_hidden_layers
    assert any(f"Skipping layer(s) {n_layers} past num_hidden_layers" in m for m in messages)
    assert all(s.startswith(f"model.layers.{n_layers}.") for s in report.skipped)
    assert Tokenizer.load(bundle_path(out)).eos_token_ids == [1, 2, 3]
    with Engine(out) as eng:
        ours = eng.forward(ids)
    assert np.abs(ours - ref).max() <= 1e-3 * ref.std()
