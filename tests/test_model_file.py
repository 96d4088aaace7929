"""The .m format: header round trips, compatibility with distributed-llama's files, and clear errors
for files and checkpoints we cannot use."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from hf_models import N_PREFILL

from dllama_py import Engine
from dllama_py.architectures import UnsupportedModelError, read_layout
from dllama_py.convert import convert
from dllama_py.model_file import MAGIC, ModelFileError, encode_header, read_header
from dllama_py.safetensors_reader import Checkpoint, CheckpointError


def test_header_round_trip(tmp_path):
    params = {"version": 0, "arch_type": 0xABCD01, "dim": 64, "norm_epsilon_f32": 1.5625e-07, "rope_theta": 500000}
    path = tmp_path / "h.m"
    path.write_bytes(encode_header(params))
    header = read_header(path)
    assert header.size == 8 + 8 * len(params)
    assert header.params["dim"] == 64 and header.params["rope_theta"] == 500000
    assert header.params["norm_epsilon_f32"] == pytest.approx(1.5625e-07, rel=1e-7)


@pytest.mark.parametrize("name", ["llama3_rope", "qwen3", "qwen3_moe"])
def test_llama_and_qwen3_files_use_only_distributed_llama_keys(tiny_models, tmp_path, name):
    # --pure Q40 (every matrix Q40, distributed-llama's quantizer) and Q80 files are distributed-llama's
    # format exactly; a default Q40 file adds per-tensor keys for the tensors it keeps at Q80.
    from dllama_py.convert import convert

    pure = tmp_path / "pure.m"
    convert(tiny_models.hf(name)[0], pure, dtype="q40", pure=True, progress=False, log=lambda *a: None)
    for path in (pure, tiny_models.converted(name, "q80")):
        assert all(k in range(22) for k in _raw_keys(path))
    assert not all(k in range(22) for k in _raw_keys(tiny_models.converted(name, "q40")))
    layout = read_layout(pure)
    if name == "llama3_rope":
        assert layout.params["rope_type"] == 2 and layout.params["rope_scaling_factor"] == 8


def _raw_keys(path):
    data = path.read_bytes()
    magic, size = struct.unpack("<ii", data[:8])
    assert magic == MAGIC
    return [k for k, _ in struct.iter_unpack("<ii", data[8:size])]


def _dllama_style_file(hf_dir, out, n_heads, n_kv_heads, head_dim, qwen3: bool):
    """A .m file written the way distributed-llama's convert-hf.py writes one (its documented key
    order, its tensor plan and q/k permutation for LLAMA; Qwen3-MoE's router and experts as gate, down,
    up), independently of our converter."""
    cfg = json.loads((hf_dir / "config.json").read_text())
    n_experts = cfg.get("num_local_experts", 0)
    arch = 0xABCD02 if n_experts else 0xABCD01 if qwen3 else 0xABCD00
    header = [(0, 0), (1, arch), (11, 1), (2, cfg["hidden_size"]),
              (3, cfg["intermediate_size"]), (4, cfg["num_hidden_layers"]), (5, n_heads), (6, n_kv_heads),
              (13, 0), (10, cfg["max_position_embeddings"]), (9, cfg["vocab_size"]), (7, n_experts),
              (8, cfg.get("num_experts_per_tok", 0)),
              (12, int(cfg.get("rope_theta") or cfg["rope_parameters"]["rope_theta"])), (19, head_dim), (20, 5)]
    if n_experts:
        header.append((21, cfg["moe_intermediate_size"]))
    if qwen3:
        header.append((18, 0))  # distributed-llama forces FALCON rope for Qwen3 whatever the file says

    def permute(w, heads):
        return w.reshape(heads, 2, w.shape[0] // heads // 2, w.shape[1]).swapaxes(1, 2).reshape(w.shape)

    with Checkpoint(hf_dir) as ck:
        tensors = [ck.read("model.embed_tokens.weight")]
        for l in range(cfg["num_hidden_layers"]):
            p = f"model.layers.{l}."
            q, k = ck.read(p + "self_attn.q_proj.weight"), ck.read(p + "self_attn.k_proj.weight")
            tensors += [q if qwen3 else permute(q, n_heads), k if qwen3 else permute(k, n_kv_heads)]
            tensors += [ck.read(p + "self_attn.v_proj.weight"), ck.read(p + "self_attn.o_proj.weight")]
            if n_experts:
                tensors.append(ck.read(p + "mlp.gate.weight"))
                for e in range(n_experts):
                    tensors += [ck.read(p + f"mlp.experts.{e}.{w}_proj.weight") for w in ("gate", "down", "up")]
            else:
                tensors += [ck.read(p + f"mlp.{w}_proj.weight") for w in ("gate", "down", "up")]
            if qwen3:
                tensors += [ck.read(p + "self_attn.q_norm.weight"), ck.read(p + "self_attn.k_norm.weight")]
            tensors += [ck.read(p + "input_layernorm.weight"), ck.read(p + "post_attention_layernorm.weight")]
        tensors += [ck.read("model.norm.weight"), ck.read("lm_head.weight")]
    with open(out, "wb") as f:
        f.write(struct.pack("<ii", MAGIC, 8 + 8 * len(header)))
        f.write(b"".join(struct.pack("<ii", k, v) for k, v in header))
        for t in tensors:
            f.write(t.astype("<f4").tobytes())


@pytest.mark.parametrize("name,qwen3", [("llama", False), ("qwen3", True), ("qwen3_moe", True)])
def test_distributed_llama_written_files_run(tiny_models, tmp_path, name, qwen3):
    hf_dir, ids, ref = tiny_models.hf(name)
    cfg = json.loads((hf_dir / "config.json").read_text())
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    path = tmp_path / "dllama.m"
    _dllama_style_file(hf_dir, path, cfg["num_attention_heads"], cfg["num_key_value_heads"], head_dim, qwen3)
    with Engine(path, threads=2) as eng:
        ours = eng.forward(ids)
    assert np.abs(ours - ref).max() <= 1e-3 * ref.std()


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "foreign.m"
    path.write_bytes(b"GGUF" + bytes(100))
    with pytest.raises(ModelFileError, match=r"foreign\.m: not a \.m model file"):
        Engine(path)


def test_unknown_header_key_names_file_key_and_value(tmp_path):
    path = tmp_path / "future.m"
    path.write_bytes(struct.pack("<iiiiii", MAGIC, 24, 1, 0xABCD00, 999, 42))
    with pytest.raises(ModelFileError, match=r"future\.m: unknown header key 999 \(value 42\)"):
        read_header(path)


def test_unknown_architecture_is_named(tmp_path):
    path = tmp_path / "arch.m"
    path.write_bytes(encode_header({"arch_type": 0x123, "dim": 8, "hidden_dim": 8, "n_layers": 1, "n_heads": 1,
                                    "n_kv_heads": 1, "vocab_size": 8, "weights_float_type": 0}))
    with pytest.raises(ModelFileError, match="unknown architecture id 0x123"):
        read_layout(path)


def test_truncated_file_names_the_incomplete_tensor(tiny_models, tmp_path):
    good = tiny_models.converted("llama", "q40")
    bad = tmp_path / "cut.m"
    bad.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(ModelFileError, match=r"cut\.m: truncated: .* tensor 'lm_head'"):
        Engine(bad)


def test_trailing_bytes_are_reported(tiny_models, tmp_path):
    bad = tmp_path / "long.m"
    bad.write_bytes(tiny_models.converted("llama", "q40").read_bytes() + b"\0" * 7)
    with pytest.raises(ModelFileError, match="7 unexpected bytes"):
        read_layout(bad)


def test_unsupported_model_type_lists_supported(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(UnsupportedModelError, match=r"'gpt2' is not supported; supported: .*llama.*qwen3"):
        convert(tmp_path, tmp_path / "out.m", progress=False, log=lambda *a: None)


def test_missing_tensor_is_named_and_nothing_is_written(tiny_models, tmp_path):
    hf_dir = tiny_models.hf("llama")[0]
    broken = tmp_path / "broken"
    shutil.copytree(hf_dir, broken)
    shard = broken / "model.safetensors"
    with Checkpoint(broken) as ck:
        keep = {n: ck.read(n) for n in ck.names() if n != "model.layers.1.mlp.up_proj.weight"}
    from safetensors.numpy import save_file

    save_file(keep, str(shard))
    out = tmp_path / "out.m"
    with pytest.raises(CheckpointError, match="missing tensor 'model.layers.1.mlp.up_proj.weight'"):
        convert(broken, out, progress=False, log=lambda *a: None)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_prompt_longer_than_context_is_refused(tiny_models):
    with Engine(tiny_models.converted("llama", "q40"), max_seq_len=16) as eng:
        assert eng.context_length == 16
        with pytest.raises(ValueError, match="exceed the context of 16"):
            eng.forward(list(range(17)))
        eng.forward(list(range(10)))
        with pytest.raises(ValueError, match="7 tokens at position 10 exceed the context of 16"):
            eng.forward(list(range(7)))
        assert eng.position == 10


def test_token_outside_vocabulary_is_refused(tiny_models):
    with Engine(tiny_models.converted("llama", "q40")) as eng:
        with pytest.raises(IndexError, match="token id 100000 is outside the vocabulary"):
            eng.forward([1, 100000])
        assert eng.position == 0


def test_reset_and_rewind_reproduce_logits(tiny_models):
    _, ids, _ = tiny_models.hf("llama")
    with Engine(tiny_models.converted("llama", "f32")) as eng:
        first = eng.forward(ids[:N_PREFILL])
        eng.reset()
        again = eng.forward(ids[:N_PREFILL])
    np.testing.assert_array_equal(first, again)


def test_default_context_is_capped(tiny_models):
    positions = 512  # the model's own context, below the 4096 cap
    per_position = 2 * 2 * 2 * 32  # layers x (K, V) x kv heads x head_dim
    with Engine(tiny_models.converted("llama", "q40")) as eng:
        assert eng.context_length == positions
        assert eng.kv_cache_bytes == positions * per_position * 2  # f16 for quantized models
    with Engine(tiny_models.converted("llama", "f32")) as eng:
        assert eng.kv_cache_bytes == positions * per_position * 4
    with Engine(tiny_models.converted("llama", "q40"), kv_cache="f32", max_seq_len=100) as eng:
        assert eng.kv_cache_bytes == 100 * per_position * 4


def test_sliding_window_caps_the_context():
    from dllama_py.architectures import plan_conversion

    base = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4, vocab_size=64,
                max_position_embeddings=32768)
    assert plan_conversion(dict(base, model_type="mistral", sliding_window=4096)).params["max_seq_len"] == 4096
    qwen = dict(base, model_type="qwen3", sliding_window=4096, use_sliding_window=False)
    assert plan_conversion(qwen).params["max_seq_len"] == 32768


def test_every_architecture_has_a_graph_builder():
    from dllama_py import _core
    from dllama_py.architectures import ARCHITECTURES

    assert sorted(a.builder for a in ARCHITECTURES) == sorted(_core.builder_names())
