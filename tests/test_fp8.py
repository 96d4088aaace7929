"""FP8 checkpoints (the official GLM-4.5/4.6 "-FP8" releases' layout: F8_E4M3 weights, one float32
`weight_scale_inv` per block, quantization_config.quant_method "fp8") convert to every dtype and match
their dequantized model."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from hf_models import CONFIGS, MIN_ROUTING_MARGIN, random_model, reference_logits, routing_margin, sequence
from safetensors.torch import load_file, save_file
from test_parity import BOUNDS

from dllama_py import Engine
from dllama_py.convert import convert
from dllama_py.hf_config import UnsupportedModelError

BLOCK = 32  # the releases use 128 x 128; 32 gives the tiny models several blocks per tensor, some partial


def is_fp8_weight(name: str, t: torch.Tensor) -> bool:
    """What the releases store as FP8: the linear layers, not embeddings, output head, norms or routers."""
    return t.dim() == 2 and name.endswith("proj.weight")


def write_fp8(hf_dir, fp8_dir, dequantized_dir):
    """The checkpoint in hf_dir as an FP8 checkpoint, and the model its FP8 weights stand for."""
    state = load_file(str(hf_dir / "model.safetensors"))
    fp8, dequantized = {}, {}
    for name, t in state.items():
        if not is_fp8_weight(name, t):
            fp8[name] = dequantized[name] = t
            continue
        rows, cols = t.shape
        padded = torch.zeros(-(-rows // BLOCK) * BLOCK, -(-cols // BLOCK) * BLOCK)
        padded[:rows, :cols] = t.float()
        blocks = padded.reshape(padded.shape[0] // BLOCK, BLOCK, padded.shape[1] // BLOCK, BLOCK)
        scale = blocks.abs().amax(dim=(1, 3)) / 448.0  # E4M3's largest value
        per_value = scale.repeat_interleave(BLOCK, 0).repeat_interleave(BLOCK, 1)[:rows, :cols]
        q = (t.float() / per_value).to(torch.float8_e4m3fn)
        fp8[name], fp8[name + "_scale_inv"] = q, scale.float().contiguous()
        dequantized[name] = (q.float() * per_value).to(t.dtype)
    for directory, tensors in ((fp8_dir, fp8), (dequantized_dir, dequantized)):
        directory.mkdir()
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        for extra in ("tokenizer.json", "generation_config.json"):
            if (hf_dir / extra).exists():
                shutil.copy(hf_dir / extra, directory / extra)
    config = json.loads((hf_dir / "config.json").read_text())
    (dequantized_dir / "config.json").write_text(json.dumps(config))
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [BLOCK, BLOCK]}
    (fp8_dir / "config.json").write_text(json.dumps(config))
    assert any(v.dtype == torch.float8_e4m3fn for v in fp8.values())


@pytest.fixture(scope="module", params=["glm4_moe_air", "glm4_moe_lite"])
def fp8_model(request, tmp_path_factory):
    """The first seed whose dequantized model routes clearly (as the parity tests choose seeds), so that a
    quantized bound failing means the converter or engine, not a near-tie between experts."""
    from transformers import AutoModelForCausalLM

    ids = sequence(CONFIGS[request.param][1]["vocab_size"])
    for seed in range(20):
        root = tmp_path_factory.mktemp(f"{request.param}_fp8_{seed}")
        random_model(request.param, seed).save_pretrained(root / "hf")
        write_fp8(root / "hf", root / "fp8", root / "dequantized")
        model = AutoModelForCausalLM.from_pretrained(root / "dequantized", dtype=torch.float32).eval()
        if routing_margin(model, ids) >= MIN_ROUTING_MARGIN:
            return root / "fp8", ids, reference_logits(model, ids)
    raise RuntimeError("no seed gives a clear routing margin")


@pytest.mark.parametrize("dtype", list(BOUNDS))
def test_fp8_checkpoint_converts_to_every_dtype(fp8_model, tmp_path, dtype):
    fp8_dir, ids, ref = fp8_model
    messages = []
    convert(fp8_dir, tmp_path / "m.m", dtype=dtype, progress=False, log=messages.append)
    assert not any("Skipping" in m for m in messages)  # the scales are used, not left over
    with Engine(tmp_path / "m.m", threads=2) as eng:
        ours = eng.forward(ids)
    rel, agree = np.abs(ours - ref).max() / ref.std(), np.mean(ours.argmax(-1) == ref.argmax(-1))
    max_rel, min_agree = BOUNDS[dtype]
    if max_rel is None:  # Q40: the parity tests' loose check
        assert rel < 1.0 and agree >= 0.5
    else:
        assert rel <= max_rel and agree >= min_agree


def test_other_quantizations_are_refused(tiny_models, tmp_path):
    hf_dir = tiny_models.hf("llama")[0]
    shutil.copytree(hf_dir, tmp_path / "awq")
    config = json.loads((tmp_path / "awq" / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "awq", "bits": 4}
    (tmp_path / "awq" / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedModelError, match="quant_method 'awq' is not supported"):
        convert(tmp_path / "awq", tmp_path / "m.m", progress=False, log=lambda *a: None)
