"""Corrupt and hostile files: a .m header, a checkpoint, a tokenizer or a chat template that is wrong gets
a clear error naming the file and the key or tensor, never a crash, a hang, NaN output or a raw traceback."""

from __future__ import annotations

import json
import math
import shutil
import struct
import subprocess
import sys

import pytest

from dllama_py import Engine
from dllama_py.architectures import UnsupportedModelError, read_layout
from dllama_py.chat_template import ChatTemplateError
from dllama_py.convert import convert
from dllama_py.engine import NonFiniteLogitsError
from dllama_py.model_file import ModelFileError, encode_header, read_header
from dllama_py.safetensors_reader import CheckpointError
from dllama_py.tokenizer import TokenizerError, bundle_path

QUIET = dict(progress=False, log=lambda *a: None)


def with_header(src, dst, drop=(), **changes):
    """A copy of the .m file src with header values changed, added or dropped."""
    header = read_header(src)
    params = {k: v for k, v in header.params.items() if k not in drop} | changes
    dst.write_bytes(encode_header(params) + src.read_bytes()[header.size:])
    return dst


def write_tokenizer(directory, template="{% for m in messages %}{{ m.content }}{% endfor %}"):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1, "b": 2, "</s>": 3}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "chat_template": template}))


# -------------------------------------------------------------------------------------------------- loader

# (tiny model, header changes, the key the error must name). The llama model: dim 128, 4 heads of 32,
# 2 KV heads, 2 layers; qwen3_moe: 8 experts of width 64.
BAD_HEADERS = [
    ("llama", dict(rope_dim=64), "rope_dim"),  # more rotary dims than a head has: was SIGSEGV
    ("llama", dict(rope_dim=31), "rope_dim"),
    ("llama", dict(n_heads=2, n_kv_heads=4), "n_kv_heads"),  # swapped: was SIGFPE
    ("llama", dict(n_kv_heads=3), "n_kv_heads"),
    ("llama", dict(n_kv_heads=0), "n_kv_heads"),
    ("llama", dict(n_heads=0), "n_heads"),  # was ZeroDivisionError
    ("llama", dict(head_dim=-32), "head_dim"),
    ("llama", dict(dim=0), "dim"),
    ("llama", dict(max_seq_len=-256), "max_seq_len"),  # was "cannot create std::vector larger than max_size()"
    ("llama", dict(vocab_size=-1), "vocab_size"),
    ("llama", dict(rope_theta=0), "rope_theta"),
    ("llama", dict(norm_epsilon_f32=math.nan), "norm_epsilon_f32"),
    ("llama", dict(norm_epsilon_f32=-1.0), "norm_epsilon_f32"),
    ("llama", dict(rope_type=2, rope_scaling_factor=8, rope_scaling_low_freq_factor=4), "rope_scaling_high_freq_factory"),
    ("llama", dict(hidden_act=0), "hidden_act"),
    ("llama", dict(attention_bias=1), "attention_bias"),  # the llama graph has no biases to load
    ("llama", dict(n_experts=4), "n_experts"),
    ("qwen3_moe", dict(topk_groups=0), "topk_groups"),
    ("qwen3_moe", dict(n_active_experts=9), "n_active_experts"),
    ("qwen3_moe", dict(n_dense_layers=1), "n_dense_layers"),  # the qwen3_moe graph has no dense layers
]


@pytest.mark.parametrize("name,changes,key", BAD_HEADERS, ids=[f"{n}-{'-'.join(c)}" for n, c, _ in BAD_HEADERS])
def test_bad_header_values_name_the_file_and_key(tiny_models, tmp_path, name, changes, key):
    path = with_header(tiny_models.converted(name, "f32"), tmp_path / "bad.m", **changes)
    with pytest.raises(ModelFileError, match=rf"bad\.m: header key {key} = "):
        Engine(path, threads=1)


def test_missing_moe_key_is_named(tiny_models, tmp_path):
    path = with_header(tiny_models.converted("qwen3_moe", "f32"), tmp_path / "bad.m", drop=["moe_hidden_dim"])
    with pytest.raises(ModelFileError, match=r"bad\.m: header has no 'moe_hidden_dim'"):  # was KeyError
        read_layout(path)


@pytest.mark.parametrize("name,changes,key", [
    ("llama", dict(n_layers=262146), "n_layers"),
    ("llama", dict(n_layers=2**31 - 1), "n_layers"),
    ("qwen3_moe", dict(n_experts=2**30, n_active_experts=2), "n_experts"),
    ("llama", dict(vocab_size=2**31 - 1), "vocab_size"),
])
def test_huge_counts_are_refused_before_any_tensor_list(tiny_models, tmp_path, name, changes, key):
    """These grew a Python list of tensors for minutes (or ran out of memory) before the size check."""
    path = with_header(tiny_models.converted(name, "q40"), tmp_path / "huge.m", **changes)
    code = f"from dllama_py.architectures import read_layout; read_layout({str(path)!r})"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert f"huge.m: header key {key} = {changes[key]} needs at least" in run.stderr.splitlines()[-1]


def test_nan_logits_raise_a_clear_error(tiny_models, tmp_path):
    good = tiny_models.converted("llama", "f32")
    layout = read_layout(good)
    norm = next(t for t in layout.tensors if t.spec.name == "final_norm")
    data = bytearray(good.read_bytes())
    struct.pack_into("<f", data, norm.offset, math.nan)
    path = tmp_path / "nan.m"
    path.write_bytes(bytes(data))
    # The NaN weight scales one value of every row's final norm, so every logit is NaN; generation
    # sampled from them and printed "!!!".
    with Engine(path, threads=1) as eng:
        with pytest.raises(NonFiniteLogitsError, match=r"nan\.m: the model produced NaN or infinite logits at position 2"):
            eng.forward([1, 2, 3])
        assert eng.position == 0  # the failed step is not kept in the cache


def test_bad_tokenizer_bundle_names_the_file(tiny_models, tmp_path):
    model = tmp_path / "m.m"
    shutil.copy(tiny_models.converted("llama", "q40"), model)
    write_tokenizer(tmp_path)
    bundle = {"format": "dllama_py-tokenizer", "version": 1, "chat_template": None, "eos_token_ids": [3],
              "tokenizer": json.loads((tmp_path / "tokenizer.json").read_text())}
    bundle["tokenizer"]["model"]["vocab"] = "not a vocabulary"
    bundle_path(model).write_text(json.dumps(bundle))
    with pytest.raises(TokenizerError, match=r"m\.m\.tokenizer\.json is not a valid tokenizer bundle"):  # was a bare Exception
        Engine(model, threads=1)
    bundle_path(model).write_text(json.dumps(dict(bundle, tokenizer=None)))
    with pytest.raises(TokenizerError, match=r"m\.m\.tokenizer\.json .* field 'tokenizer' is NoneType"):
        Engine(model, threads=1)


def test_chat_template_with_huge_loops_fails_fast(tiny_models, tmp_path):
    hf_dir = tmp_path / "hf"
    shutil.copytree(tiny_models.hf("llama")[0], hf_dir)
    write_tokenizer(hf_dir, "{% for i in range(10000) %}{% for j in range(1000) %}{% endfor %}{% endfor %}")
    convert(hf_dir, tmp_path / "m.m", dtype="q40", **QUIET)
    with Engine(tmp_path / "m.m", threads=1) as eng:
        with pytest.raises(ChatTemplateError, match=r"m\.m\.tokenizer\.json: chat template runs more than"):
            list(eng.chat([{"role": "user", "content": "a"}], max_tokens=1))


# ----------------------------------------------------------------------------------------------- converter


@pytest.fixture
def checkpoint(tiny_models, tmp_path):
    """A copy of the tiny llama checkpoint (hidden 128, 4 heads, 2 layers), with a tokenizer."""
    hf_dir = tmp_path / "hf"
    shutil.copytree(tiny_models.hf("llama")[0], hf_dir)
    write_tokenizer(hf_dir)
    return hf_dir


BAD_CONFIGS = [
    # (changes, the key the error names); each was accepted (a file that crashes, loads wrong or gives
    # NaN) or ended in a raw traceback
    (dict(rope_theta=-1.0), "rope_theta"),
    (dict(rope_theta=0), "rope_theta"),
    (dict(rms_norm_eps=math.nan), "rms_norm_eps"),
    (dict(rms_norm_eps=0.0), "rms_norm_eps"),
    (dict(num_hidden_layers=0), "num_hidden_layers"),
    (dict(num_hidden_layers=-2), "num_hidden_layers"),
    (dict(partial_rotary_factor=8.0), "partial_rotary_factor"),  # rope_dim > head_dim: the file crashed
    (dict(num_key_value_heads=3), "num_key_value_heads"),
    (dict(hidden_size="128"), "hidden_size"),
    (dict(hidden_size=127.5), "hidden_size"),
    (dict(max_position_embeddings=[]), "max_position_embeddings"),
    (dict(vocab_size=2**40), "vocab_size"),
    (dict(rope_scaling="x"), "rope_scaling"),
    (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 64}), "high_freq_factor"),
    (dict(num_hidden_layers=2**31 - 1), "n_layers"),  # refused before a list of 2^31 layers' tensors
]


@pytest.mark.parametrize("changes,key", BAD_CONFIGS, ids=[f"{k}-{v!r}"[:40] for c, k in BAD_CONFIGS for v in c.values()])
def test_bad_config_values_name_the_key(checkpoint, tmp_path, changes, key):
    config = json.loads((checkpoint / "config.json").read_text()) | changes
    (checkpoint / "config.json").write_text(json.dumps(config))
    out = tmp_path / "out.m"
    with pytest.raises(UnsupportedModelError, match=rf"{checkpoint}: .*\b{key}\b"):
        convert(checkpoint, out, dtype="f32", **QUIET)
    assert not out.exists() and not bundle_path(out).exists()


def _edit_safetensors(directory, edit):
    """Rewrites model.safetensors with edit(header, data) -> (header, data)."""
    path = directory / "model.safetensors"
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    header, data = edit(json.loads(raw[8 : 8 + n]), raw[8 + n :])
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)


NORM = "model.layers.0.input_layernorm.weight"
OTHER = "model.layers.1.input_layernorm.weight"


def _offsets(begin, end):
    def edit(h, d):
        h[NORM]["data_offsets"] = [begin(h[NORM]["data_offsets"]), end(h[NORM]["data_offsets"])]
        return h, d
    return edit


def _set(name, key, value):
    def edit(h, d):
        h[name][key] = value
        return h, d
    return edit


def _value_at(name, value):
    def edit(h, d):
        begin = h[name]["data_offsets"][0]
        return h, d[:begin] + struct.pack("<f", value) + d[begin + 4 :]
    return edit


BAD_SAFETENSORS = [
    (_offsets(lambda o: -512, lambda o: o[1] - o[0] - 512), "data_offsets"),  # into the header
    (_offsets(lambda o: o[0], lambda o: o[1] + 2**40), "data_offsets"),  # past the end
    (_offsets(lambda o: o[0], lambda o: o[1] - 4), "needs 512"),  # size != shape x dtype
    (lambda h, d: (h | {NORM: dict(h[OTHER])}, d), "share data bytes"),  # overlapping
    (_set(NORM, "dtype", "F9"), "unknown dtype"),
    (_set(NORM, "shape", [-128]), "shape"),
    (_value_at(NORM, math.nan), "holds NaN or infinite values"),
    (_value_at(NORM, math.inf), "holds NaN or infinite values"),
]


@pytest.mark.parametrize("edit,message", BAD_SAFETENSORS)
def test_bad_safetensors_name_the_file_and_tensor(checkpoint, tmp_path, edit, message):
    _edit_safetensors(checkpoint, edit)
    out = tmp_path / "out.m"
    with pytest.raises(CheckpointError, match=rf"{checkpoint}.*{NORM}.*{message}|{checkpoint}.*{message}.*{NORM}"):
        convert(checkpoint, out, dtype="f32", **QUIET)
    assert not out.exists()


def test_weights_too_large_for_the_storage_type_are_named(checkpoint, tmp_path):
    _edit_safetensors(checkpoint, _value_at("model.layers.0.self_attn.q_proj.weight", 1e6))
    with pytest.raises(CheckpointError, match=r"q_proj\.weight' holds values up to 1e\+06, more than F16 can store"):
        convert(checkpoint, tmp_path / "out.m", dtype="f16", **QUIET)
    convert(checkpoint, tmp_path / "out.m", dtype="f32", **QUIET)  # F32 holds it


def test_model_and_bundle_are_replaced_together(checkpoint, tmp_path):
    out = tmp_path / "out.m"
    convert(checkpoint, out, dtype="q40", **QUIET)
    model, bundle = out.read_bytes(), bundle_path(out).read_bytes()
    # a checkpoint whose tokenizer fails: nothing is replaced (the new .m stood beside the old bundle)
    (checkpoint / "tokenizer.json").write_text('{"model": {"type": "BPE"}}')
    with pytest.raises(TokenizerError, match=r"tokenizer\.json: cannot be loaded"):
        convert(checkpoint, out, dtype="f32", **QUIET)
    assert out.read_bytes() == model and bundle_path(out).read_bytes() == bundle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "out.m", "out.m.tokenizer.json"]
    # a checkpoint without a tokenizer: the old bundle goes with the old model
    (checkpoint / "tokenizer.json").unlink()
    convert(checkpoint, out, dtype="f32", **QUIET)
    assert out.read_bytes() != model and not bundle_path(out).exists()


@pytest.mark.parametrize("damage", ["config", "safetensors", "model", "output"])
def test_cli_prints_one_line_for_bad_input(checkpoint, tmp_path, damage):
    out = tmp_path / "out.m"
    if damage == "output":  # a directory where the model should go
        out.mkdir()
        command = ["convert", str(checkpoint), "-o", str(out), "--dtype", "f32"]
    elif damage == "config":
        (checkpoint / "config.json").write_text('{"model_type": "llama", "hidden_size": NaN')
        command = ["convert", str(checkpoint), "-o", str(out)]
    elif damage == "safetensors":
        _edit_safetensors(checkpoint, _set(NORM, "data_offsets", "x"))
        command = ["convert", str(checkpoint), "-o", str(out)]
    else:
        convert(checkpoint, out, dtype="f32", **QUIET)
        with_header(out, out, n_heads=2, n_kv_heads=4)  # was SIGFPE
        command = ["generate", "-m", str(out), "a b"]
    run = subprocess.run([sys.executable, "-m", "dllama_py.cli", *command], capture_output=True, text=True, timeout=120)
    assert run.returncode == 1
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    assert run.stderr.startswith("dllama-py: error: ") and str(tmp_path) in run.stderr
    assert not bundle_path(out).exists() or damage == "model"  # no bundle without its model
