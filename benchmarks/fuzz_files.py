"""Fuzzing the file readers: corrupted .m files for the loader, bad checkpoints for the converter.

    PYTHONPATH=src python benchmarks/fuzz_files.py                       # both targets, 10,000 cases each
    PYTHONPATH=src python benchmarks/fuzz_files.py loader -n 2000 --seed 7 --jobs 2
    PYTHONPATH=src python benchmarks/fuzz_files.py converter --case 1234 --seed 7 --keep /tmp/case  # one case again
    PYTHONPATH=src python benchmarks/fuzz.py loader converter           # the same, from the fuzz driver

Every case runs in its own process, forked from this one after `dllama_py` is imported (a fork server:
a case costs a fork, not an interpreter start). The child builds its corrupted input from the target's
seed files, runs the code under test and exits with a code saying how it ended; the parent enforces the
time limit and records signals. Per target it prints

    tried | accepted | clean error | crash | hang

accepted: the input was used without complaint (e.g. a bit flip in the weights); clean error: one of the
target's own error types, naming the input; crash: a signal, an uncaught exception, or an error that
does not name the input; hang: still running after --timeout seconds (killed). The inputs of crashes
and hangs are kept under --keep with case.txt (what was corrupted) and traceback.txt.

A target is one entry of TARGETS: `prepare(seed_dir)` writes its seed files once (in a child of its own,
so the parent starts no threads before forking), `make(seed_dir, case_dir, rng)` writes one corrupted
input and returns a one-line description, `run(seed_dir, case_dir)` feeds it to the code under test.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import select
import shutil
import signal
import struct
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from make_model import write_byte_tokenizer, write_shard  # noqa: E402

# Imported once here (no threads start on import), so that every forked case starts with them loaded.
import dllama_py.convert  # noqa: E402,F401
import dllama_py.engine  # noqa: E402,F401
from dllama_py.architectures import plan_conversion  # noqa: E402
from dllama_py.model_file import FLOAT_BITS_KEYS, HEADER_KEYS, KEY_NAMES, MAGIC, TENSOR_TYPE_KEYS, FloatType  # noqa: E402


@dataclass(frozen=True)
class Target:
    prepare: Callable[[Path], None]
    make: Callable[[Path, Path, random.Random], str]
    run: Callable[[Path, Path], None]
    clean_errors: tuple[type[BaseException], ...]


# Exit codes of a case's process.
ACCEPTED, CLEAN, UNCLEAN, BROKEN = 0, 3, 4, 5


# ------------------------------------------------------------------------------------------ seed models
# Tiny checkpoints of every architecture, written from the architecture table's own tensor list, so
# that a new architecture needs only a config here.

TINY = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vocab_size=288, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0)
MOE = dict(moe_intermediate_size=32, n_routed_experts=4, num_experts_per_tok=2, n_shared_experts=1, n_group=1,
           topk_group=1, routed_scaling_factor=1.0, norm_topk_prob=True)
SEEDS: dict[str, tuple[dict, str]] = {  # name -> (config.json, .m weight type)
    "llama": (dict(TINY, model_type="llama"), "q40"),
    "qwen3": (dict(TINY, model_type="qwen3", head_dim=32, tie_word_embeddings=True), "f32"),
    "qwen3_moe": (dict(TINY, model_type="qwen3_moe", head_dim=32, num_experts=4, num_experts_per_tok=2,
                       moe_intermediate_size=32, norm_topk_prob=True), "q80"),
    "glm": (dict(TINY, model_type="glm", head_dim=32, partial_rotary_factor=0.5, attention_bias=True), "q80"),
    "chatglm": (dict(model_type="chatglm", hidden_size=64, ffn_hidden_size=96, num_layers=2, num_attention_heads=4,
                     multi_query_attention=True, multi_query_group_num=2, kv_channels=16, padded_vocab_size=288,
                     seq_length=256, layernorm_epsilon=1e-5, add_qkv_bias=True, rmsnorm=True), "q40"),
    "glm4": (dict(TINY, model_type="glm4", head_dim=32, partial_rotary_factor=0.5, attention_bias=True), "f16"),
    "glm4_moe": (dict(TINY | MOE, model_type="glm4_moe", num_hidden_layers=3, head_dim=32, partial_rotary_factor=0.5,
                      attention_bias=True, use_qk_norm=True, first_k_dense_replace=1), "q40"),
    "glm4_moe_lite": (dict(TINY | MOE, model_type="glm4_moe_lite", num_key_value_heads=4, q_lora_rank=32,
                           kv_lora_rank=32, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                           mlp_layer_types=["dense", "sparse"]), "q40"),
}


def write_tiny_checkpoint(config: dict, out: Path, bf16: bool = False, seed: int = 0):
    """A random checkpoint for `config`: every tensor the converter reads, in the shapes it expects."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=1))
    shapes: dict[str, tuple[int, ...]] = {}
    for spec in plan_conversion(config).tensors(FloatType.F32):
        if spec.source_rows:  # one part of a fused tensor: the tensor holds every part's rows
            old = shapes.get(spec.source, (0,))
            shapes[spec.source] = (max(old[0], spec.source_rows[1]),) + (() if spec.rows == 1 else (spec.cols,))
        elif spec.source_shape:
            shapes[spec.source] = spec.source_shape
        elif not (spec.fallback and config.get("tie_word_embeddings")):
            shapes[spec.source] = (spec.cols,) if spec.rows == 1 else (spec.rows, spec.cols)
    rng = np.random.default_rng(seed)
    tensors = {}
    for name, shape in shapes.items():
        x = (np.ones(shape, np.float32) + 0.1 * rng.standard_normal(shape, dtype=np.float32) if "norm" in name
             else 0.05 * rng.standard_normal(shape, dtype=np.float32))
        if bf16:
            tensors[name] = (shape, "BF16", (x.view(np.uint32) >> 16).astype("<u2").tobytes())
        else:
            tensors[name] = (shape, "F32", x.astype("<f4").tobytes())
    write_shard(out / "model.safetensors", tensors)
    write_byte_tokenizer(out, config.get("vocab_size") or config["padded_vocab_size"])


# ---------------------------------------------------------------------------------------- boundary values

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
BOUNDARY_INTS = [0, -1, 1, 2, 3, 7, 8, 31, 32, 33, 63, 64, 100, 255, 256, 1023, 4096, 65535, 65536, 1 << 20,
                 1 << 24, 1 << 28, 1 << 30, INT32_MAX - 1, INT32_MAX, INT32_MIN, INT32_MIN + 1]
BOUNDARY_FLOATS = [0.0, -0.0, -1.0, 1.0, 0.5, 2.0, 1e-45, 1e-30, 1e-7, 1e30, 3.4e38, math.inf, -math.inf, math.nan]


def mutated_int(rng: random.Random, old: int) -> int:
    choice = rng.random()
    if choice < 0.6:
        return rng.choice(BOUNDARY_INTS)
    if choice < 0.9:
        return max(INT32_MIN, min(INT32_MAX, rng.choice([old + 1, old - 1, old * 2, old // 2, old * 31, -old, old + 32])))
    return rng.randint(INT32_MIN, INT32_MAX)


def float_bits(x: float) -> int:
    return struct.unpack("<i", struct.pack("<f", x))[0]


# ----------------------------------------------------------------------------------------------- loader

def loader_prepare(seed_dir: Path):
    from dllama_py.convert import convert

    for name, (config, dtype) in SEEDS.items():
        hf_dir = seed_dir / f"{name}-hf"
        write_tiny_checkpoint(config, hf_dir)
        convert(hf_dir, seed_dir / f"{name}.m", dtype=dtype, progress=False, log=lambda *a: None)
        shutil.rmtree(hf_dir)


def _header_pairs(data: bytes) -> tuple[int, list[list[int]]]:
    size = struct.unpack_from("<i", data, 4)[0]
    return size, [list(p) for p in struct.iter_unpack("<ii", data[8:size])]


def _with_pairs(data: bytes, old_size: int, pairs: list[list[int]]) -> bytes:
    head = struct.pack("<ii", MAGIC, 8 + 8 * len(pairs)) + b"".join(struct.pack("<ii", k, v) for k, v in pairs)
    return head + data[old_size:]


def _mutate_header_value(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    size, pairs = _header_pairs(data)
    pair = rng.choice(pairs)
    name = KEY_NAMES.get(pair[0], f"key {pair[0]}")
    old = pair[1]
    if name in FLOAT_BITS_KEYS and rng.random() < 0.7:
        value = rng.choice(BOUNDARY_FLOATS)
        pair[1] = float_bits(value)
    else:
        value = pair[1] = mutated_int(rng, old)
    return _with_pairs(data, size, pairs), f"header {name}: {old} -> {value}"


def _mutate_header_keys(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    size, pairs = _header_pairs(data)
    kind = rng.choice(["add", "drop", "rename", "duplicate", "swap", "swap_heads", "tensor_type"])
    if kind == "tensor_type":  # a per-tensor storage type
        key, value = TENSOR_TYPE_KEYS + rng.choice([0, 1, 2, 5, 30, 1000]), rng.choice([0, 1, 2, 3, 4, -1])
        pairs.append([key, value])
        what = f"add tensor type key {key} = {value}"
    elif kind == "add":
        name = rng.choice(list(HEADER_KEYS))
        value = float_bits(rng.choice(BOUNDARY_FLOATS)) if name in FLOAT_BITS_KEYS else rng.choice(BOUNDARY_INTS)
        pairs.insert(rng.randrange(len(pairs) + 1), [HEADER_KEYS[name], value])
        what = f"add {name}={value}"
    elif kind == "drop":
        i = rng.randrange(len(pairs))
        what = f"drop key {pairs.pop(i)[0]}"
    elif kind == "rename":
        pair = rng.choice(pairs)
        new = rng.choice(list(HEADER_KEYS.values()) + [22, 255, 281, -1, INT32_MAX])
        what, pair[0] = f"key {pair[0]} -> {new}", new
    elif kind == "duplicate":
        pair = rng.choice(pairs)
        pairs.append([pair[0], mutated_int(rng, pair[1])])
        what = f"duplicate key {pair[0]} = {pairs[-1][1]}"
    else:
        keys = {k: i for i, (k, _) in enumerate(pairs)}
        if kind == "swap_heads" and HEADER_KEYS["n_heads"] in keys and HEADER_KEYS["n_kv_heads"] in keys:
            a, b = keys[HEADER_KEYS["n_heads"]], keys[HEADER_KEYS["n_kv_heads"]]
        else:
            a, b = rng.sample(range(len(pairs)), 2)
        pairs[a][1], pairs[b][1] = pairs[b][1], pairs[a][1]
        what = f"swap values of keys {pairs[a][0]} and {pairs[b][0]}"
    return _with_pairs(data, size, pairs), what


def _corrupt_model(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    size = struct.unpack_from("<i", data, 4)[0]
    kind = rng.choices(["bitflip", "value", "keys", "size", "truncate", "extend", "magic"],
                       weights=[25, 35, 15, 4, 12, 6, 3])[0]
    if kind == "value":
        return _mutate_header_value(data, rng)
    if kind == "keys":
        return _mutate_header_keys(data, rng)
    buf = bytearray(data)
    if kind == "bitflip":
        n = rng.choice([1, 1, 2, 4, 16])
        in_header = rng.random() < 0.4
        bits = [rng.randrange(8 * (size if in_header else len(buf))) for _ in range(n)]
        for b in bits:
            buf[b // 8] ^= 1 << (b % 8)
        return bytes(buf), f"flip bits {bits}"
    if kind == "size":
        value = rng.choice(BOUNDARY_INTS + [size - 8, size + 8, size + 1, size - 1, len(data), len(data) + 8])
        struct.pack_into("<i", buf, 4, value)
        return bytes(buf), f"header size {size} -> {value}"
    if kind == "truncate":
        cut = rng.choice([rng.randrange(len(buf)), rng.randrange(size + 8), len(buf) - rng.randint(1, 64)])
        return bytes(buf[:cut]), f"truncate to {cut} of {len(buf)} bytes"
    if kind == "extend":
        extra = rng.choice([1, 7, 8, 32, 4096])
        return bytes(buf) + rng.randbytes(extra), f"append {extra} random bytes"
    value = rng.choice([0, 0xABCD00, 0xABCD01, MAGIC ^ 1, INT32_MIN])
    struct.pack_into("<I", buf, 0, value & 0xFFFFFFFF)
    return bytes(buf), f"magic -> {value:#x}"


def _corrupt_bundle(text: str, rng: random.Random) -> tuple[str, str]:
    bundle = json.loads(text)
    kind = rng.choice(["truncate", "not_dict", "field_type", "drop_field", "tokenizer_model", "template"])
    if kind == "truncate":
        cut = rng.randrange(len(text))
        return text[:cut], f"bundle truncated to {cut} chars"
    if kind == "not_dict":
        return json.dumps(rng.choice([[], 1, None, "x"])), "bundle is not an object"
    key = rng.choice(sorted(bundle))
    if kind == "field_type":
        bundle[key] = rng.choice([None, 1, -1, "x", [], {}, [None], 1.5, [INT32_MAX + 5]])
        return json.dumps(bundle), f"bundle {key} = {bundle[key]!r}"
    if kind == "drop_field":
        del bundle[key]
        return json.dumps(bundle), f"bundle without {key}"
    if kind == "tokenizer_model":
        model = bundle["tokenizer"]["model"]
        mkey = rng.choice(sorted(model))
        model[mkey] = rng.choice([None, 1, "x", [], {}, [["a", "b"]], {"a": -5}])
        return json.dumps(bundle), f"bundle tokenizer.model.{mkey} = {model[mkey]!r}"
    bundle["chat_template"] = rng.choice([
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        "{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}",
        "{{ messages.__class__.__mro__ }}", "{% for m in messages %}", "{{ raise_exception('no') }}",
        "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "{{ 'x' * 1000000000 }}",
    ])
    return json.dumps(bundle), f"chat template {bundle['chat_template']!r}"


def loader_make(seed_dir: Path, case_dir: Path, rng: random.Random) -> str:
    name = rng.choice(sorted(SEEDS))
    model, bundle = case_dir / "model.m", case_dir / "model.m.tokenizer.json"
    data = (seed_dir / f"{name}.m").read_bytes()
    bundle_text = (seed_dir / f"{name}.m.tokenizer.json").read_text()
    if rng.random() < 0.08:
        bundle_text, what = _corrupt_bundle(bundle_text, rng)
    else:
        steps = []
        for _ in range(1 if rng.random() < 0.85 else rng.randint(2, 3)):
            try:
                data, step = _corrupt_model(data, rng)
            except (struct.error, IndexError, KeyError, ValueError, StopIteration):
                break  # an earlier step left no header to mutate
            steps.append(step)
        what = "; ".join(steps)
    model.write_bytes(data)
    bundle.write_text(bundle_text)
    return f"{name}: {what}"


def loader_run(seed_dir: Path, case_dir: Path):
    from dllama_py import Engine

    with Engine(case_dir / "model.m", threads=1, max_seq_len=64) as eng:
        vocab = eng.config.vocab_size
        eng.forward([i % vocab for i in range(1, min(6, eng.context_length + 1))], all_logits=False)
        eng.reset()
        if eng.tokenizer is not None:
            list(eng.generate([1, 2, 3][: eng.context_length], max_tokens=3, temperature=0))
            if eng.tokenizer.chat_template:
                eng.apply_chat_template([{"role": "user", "content": "hi"}])


# -------------------------------------------------------------------------------------------- converter

CONVERTER_SEEDS = list(SEEDS)
CONFIG_KEYS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
               "head_dim", "vocab_size", "max_position_embeddings", "rms_norm_eps", "rope_theta",
               "partial_rotary_factor", "tie_word_embeddings", "sliding_window", "moe_intermediate_size",
               "n_routed_experts", "num_experts", "num_experts_per_tok", "n_shared_experts", "first_k_dense_replace",
               "n_group", "topk_group", "routed_scaling_factor", "norm_topk_prob", "q_lora_rank", "kv_lora_rank",
               "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "attention_bias", "mlp_layer_types",
               "model_type", "hidden_act", "rope_scaling", "rope_parameters", "use_qk_norm",
               # chatglm's names
               "ffn_hidden_size", "num_layers", "multi_query_group_num", "kv_channels", "padded_vocab_size",
               "seq_length", "layernorm_epsilon", "rope_ratio", "add_qkv_bias", "multi_query_attention"]
CONFIG_VALUES = [0, -1, 1, 2, 3, 7, 31, 33, 1000, 2**31 - 1, 2**31, 2**63, -(2**31), 0.5, 8.0, 1e30, 1e-30,
                 math.nan, math.inf, -math.inf, None, "x", "", [], {}, [1], True, False]
ROPE_SCALINGS = [
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 1.0,
     "original_max_position_embeddings": 32},
    {"rope_type": "llama3", "factor": 0.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 32},
    {"rope_type": "llama3", "factor": 8.0}, {"rope_type": "yarn", "factor": 4.0},
    {"rope_type": "yarn", "factor": -2.0, "original_max_position_embeddings": 0},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "beta_fast": 0, "beta_slow": math.nan},
    {"rope_type": "linear", "factor": 2.0}, {"type": "dynamic"}, {"rope_type": None}, [], "x",
]


def converter_prepare(seed_dir: Path):
    for i, name in enumerate(CONVERTER_SEEDS):
        write_tiny_checkpoint(SEEDS[name][0], seed_dir / name, bf16=i % 2 == 1, seed=i)


def _read_shard(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack_from("<Q", raw)
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _write_shard(path: Path, header: dict | bytes, data: bytes, header_len: int | None = None):
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob) if header_len is None else header_len) + blob + data)


def _corrupt_config(config: dict, rng: random.Random) -> tuple[dict | str, str]:
    kind = rng.choices(["value", "delete", "rope", "syntax"], weights=[70, 10, 15, 5])[0]
    if kind == "syntax":
        return rng.choice(["{", "[]", "null", '{"model_type": "llama", "hidden_size": NaN', "\xff"]), "config syntax"
    if kind == "delete":
        key = rng.choice(sorted(config))
        del config[key]
        return config, f"config without {key}"
    if kind == "rope":
        key = rng.choice(["rope_scaling", "rope_parameters"])
        config[key] = rng.choice(ROPE_SCALINGS)
        return config, f"config {key} = {config[key]!r}"
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        key = rng.choice(CONFIG_KEYS)
        old = config.get(key)
        config[key] = rng.choice(CONFIG_VALUES + ([old * 2, old + 1, old - 1] if isinstance(old, int) else []))
    return config, f"config {key}: {old!r} -> {config[key]!r}"


def _corrupt_safetensors(path: Path, rng: random.Random) -> str:
    header, data = _read_shard(path)
    names = sorted(k for k in header if k != "__metadata__")
    name = rng.choice(names)
    entry = header[name]
    kind = rng.choice(["offsets", "overlap", "shape", "dtype", "entry", "drop", "header_len", "garbage", "nonfinite",
                       "truncate", "bitflip"])
    if kind == "offsets":
        begin, end = entry["data_offsets"]
        entry["data_offsets"] = rng.choice([[-8, end], [begin - 16, end - 16], [end, begin], [begin, end + 4],
                                            [begin, len(data) + 64], [2**63, 2**63 + 4], [begin], [begin, "x"],
                                            [begin + 2, end + 2]])
        what = f"{name} data_offsets {entry['data_offsets']}"
    elif kind == "overlap":
        other = header[rng.choice(names)]
        entry["data_offsets"] = list(other["data_offsets"])
        entry["shape"], entry["dtype"] = list(other["shape"]), other["dtype"]
        what = f"{name} overlaps another tensor"
    elif kind == "shape":
        entry["shape"] = rng.choice([[], [0], [-1, 4], [2**40, 2**40], entry["shape"][::-1], entry["shape"] + [1],
                                     [1] + entry["shape"], ["x"], None, [1.5]])
        what = f"{name} shape {entry['shape']}"
    elif kind == "dtype":
        entry["dtype"] = rng.choice(["I8", "BOOL", "F8_E4M3", "U64", "f32", "", None, 7, "F64", "F16"])
        what = f"{name} dtype {entry['dtype']!r}"
    elif kind == "entry":
        header[name] = rng.choice([None, 1, "x", [], {}, {"dtype": "F32"}])
        what = f"{name} entry {header[name]!r}"
    elif kind == "drop":
        del header[name]
        what = f"{name} removed"
    elif kind == "header_len":
        blob = json.dumps(header).encode()
        n = rng.choice([0, 1, 7, len(blob) - 1, len(blob) + 1, 2**40, 2**64 - 1])
        _write_shard(path, blob, data, header_len=n)
        return f"header length {n}"
    elif kind == "garbage":
        _write_shard(path, rng.choice([b"[]", b"{", b"null", b'{"a": 1}', bytes(16), b'{"__metadata__": 5}']), data)
        return "header garbage"
    elif kind == "nonfinite":
        begin, end = entry["data_offsets"]
        value = rng.choice([math.nan, math.inf, -math.inf])
        itemsize = 4 if entry["dtype"] == "F32" else 2  # bf16: the high half of a float32
        at = begin + itemsize * rng.randrange((end - begin) // itemsize)
        data = data[:at] + struct.pack("<f", value)[4 - itemsize :] + data[at + itemsize :]
        what = f"{name} holds {value}"
    elif kind == "truncate":
        data = data[: rng.randrange(len(data))]
        what = "data truncated"
    else:
        data = bytearray(data)
        for _ in range(rng.choice([1, 8, 64])):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        data = bytes(data)
        what = "data bit flips"
    _write_shard(path, header, data)
    return what


def _corrupt_tokenizer_files(case_dir: Path, rng: random.Random) -> str:
    kind = rng.choice(["tokenizer_json", "tokenizer_config", "generation_config", "index"])
    if kind == "tokenizer_json":
        path = case_dir / "tokenizer.json"
        text = path.read_text()
        path.write_text(rng.choice([text[: rng.randrange(len(text))], "[]", '{"model": {"type": "BPE"}}']))
        return "tokenizer.json corrupted"
    if kind == "tokenizer_config":
        value = rng.choice([[], 5, {"eos_token": 5}, {"chat_template": 5}, {"chat_template": [{"x": 1}]},
                            {"added_tokens_decoder": {"x": {}}}, {"added_tokens_decoder": 3},
                            {"eos_token": {"content": None}}, {"extra_special_tokens": 7}])
        (case_dir / "tokenizer_config.json").write_text(json.dumps(value))
        return f"tokenizer_config.json = {value!r}"
    if kind == "generation_config":
        value = rng.choice([[], {"eos_token_id": "x"}, {"eos_token_id": [None, -5]}, {"eos_token_id": 2**40}])
        (case_dir / "generation_config.json").write_text(json.dumps(value))
        return f"generation_config.json = {value!r}"
    value = rng.choice([{"weight_map": {"model.norm.weight": "missing.safetensors"}}, {"weight_map": []}, [],
                        {"weight_map": {"model.norm.weight": "../model.safetensors"}}, {}, {"weight_map": {"a": 5}}])
    (case_dir / "model.safetensors.index.json").write_text(json.dumps(value))
    return f"index = {value!r}"


def converter_make(seed_dir: Path, case_dir: Path, rng: random.Random) -> str:
    name = rng.choice(CONVERTER_SEEDS)
    shutil.copytree(seed_dir / name, case_dir, dirs_exist_ok=True)
    kind = rng.choices(["config", "safetensors", "tokenizer"], weights=[50, 40, 10])[0]
    if kind == "config":
        config, what = _corrupt_config(json.loads((case_dir / "config.json").read_text()), rng)
        (case_dir / "config.json").write_text(config if isinstance(config, str) else json.dumps(config))
    elif kind == "safetensors":
        what = _corrupt_safetensors(case_dir / "model.safetensors", rng)
    else:
        what = _corrupt_tokenizer_files(case_dir, rng)
    (case_dir / "dtype").write_text(rng.choice(["f32", "f16", "q80", "q40"]))
    return f"{name}: {what}"


def converter_run(seed_dir: Path, case_dir: Path):
    """Converts the checkpoint; a file it writes must load and run (or give the engine's own error)."""
    from dllama_py import Engine
    from dllama_py.convert import convert

    out = case_dir / "out.m"
    convert(case_dir, out, dtype=(case_dir / "dtype").read_text(), progress=False, log=lambda *a: None)
    with Engine(out, threads=1, max_seq_len=32) as eng:
        eng.forward([1, 2, 3][: eng.context_length], all_logits=False)


# ------------------------------------------------------------------------------------------------ table

def _loader_errors():
    from dllama_py.chat_template import ChatTemplateError
    from dllama_py.engine import NonFiniteLogitsError
    from dllama_py.model_file import ModelFileError
    from dllama_py.tokenizer import TokenizerError

    return ModelFileError, NonFiniteLogitsError, TokenizerError, ChatTemplateError


def _converter_errors():
    from dllama_py.convert import CONVERSION_ERRORS
    from dllama_py.engine import NonFiniteLogitsError

    return *CONVERSION_ERRORS, NonFiniteLogitsError


TARGETS: dict[str, Callable[[], Target]] = {
    "loader": lambda: Target(loader_prepare, loader_make, loader_run, _loader_errors()),
    "converter": lambda: Target(converter_prepare, converter_make, converter_run, _converter_errors()),
}


# ----------------------------------------------------------------------------------------------- driver

@dataclass
class Tally:
    tried: int = 0
    accepted: int = 0
    clean: int = 0
    crash: int = 0
    hang: int = 0
    examples: list[str] = field(default_factory=list)  # the first crashes and hangs, for the report

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("tried", "accepted", "clean", "crash", "hang")} | {"examples": self.examples}


def _case_rng(seed: int, index: int) -> random.Random:
    return random.Random(seed * 1_000_003 + index)


def _child(target: Target, seed_dir: Path, case_dir: Path, seed: int, index: int, memory_limit: int):
    """The body of a case's process: never returns."""
    code = BROKEN
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        if memory_limit:
            resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
        case_dir.mkdir(parents=True, exist_ok=True)
        (case_dir / "case.txt").write_text(target.make(seed_dir, case_dir, _case_rng(seed, index)) + "\n")
        try:
            target.run(seed_dir, case_dir)
            code = ACCEPTED
        except target.clean_errors as e:
            if str(case_dir) in str(e):
                code = CLEAN
            else:
                (case_dir / "traceback.txt").write_text(f"error does not name the input:\n{traceback.format_exc()}")
                code = UNCLEAN
        except BaseException:
            (case_dir / "traceback.txt").write_text(traceback.format_exc())
            code = UNCLEAN
    except BaseException:
        try:
            (case_dir / "traceback.txt").write_text("the case generator failed:\n" + traceback.format_exc())
        except BaseException:
            pass
    os._exit(code)


def _fork(fn, *args) -> int:
    pid = os.fork()
    if pid == 0:
        fn(*args)
        os._exit(BROKEN)
    return pid


def prepare_seeds(target: Target, seed_dir: Path):
    def body():
        try:
            target.prepare(seed_dir)
            os._exit(0)
        except BaseException:
            traceback.print_exc()
            os._exit(1)

    _, status = os.waitpid(_fork(body), 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"preparing the seeds in {seed_dir} failed")


def fuzz(name: str, n: int, seed: int, jobs: int, timeout: float, work_dir: Path, keep_dir: Path | None,
         memory_limit: int, first: int = 0, progress: bool = False) -> Tally:
    target = TARGETS[name]()
    seed_dir = work_dir / f"{name}-seeds"
    prepare_seeds(target, seed_dir)
    tally = Tally()
    running: dict[int, tuple[int, float, int, Path]] = {}  # pidfd -> (pid, deadline, index, case dir)
    poller = select.poll()
    next_index = first
    while next_index < first + n or running:
        while len(running) < jobs and next_index < first + n:
            case_dir = work_dir / f"{name}-{next_index}"
            pid = _fork(_child, target, seed_dir, case_dir, seed, next_index, memory_limit)
            fd = os.pidfd_open(pid)
            poller.register(fd, select.POLLIN)
            running[fd] = (pid, time.monotonic() + timeout, next_index, case_dir)
            next_index += 1
        wait_ms = max(0.0, min(d for _, d, _, _ in running.values()) - time.monotonic()) * 1000
        ready = {fd for fd, _ in poller.poll(wait_ms + 1)}
        now = time.monotonic()
        for fd in list(running):
            pid, deadline, index, case_dir = running[fd]
            if fd not in ready and now < deadline:
                continue
            hung = fd not in ready
            if hung:
                os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            poller.unregister(fd)
            os.close(fd)
            del running[fd]
            _record(tally, name, index, case_dir, status, hung, keep_dir)
            if progress and tally.tried % 500 == 0:
                print(f"  {name}: {tally.tried} tried, {tally.crash} crashes, {tally.hang} hangs", file=sys.stderr)
    shutil.rmtree(seed_dir, ignore_errors=True)
    return tally


def _record(tally: Tally, name: str, index: int, case_dir: Path, status: int, hung: bool, keep_dir: Path | None):
    tally.tried += 1
    code = os.waitstatus_to_exitcode(status)
    if hung:
        tally.hang += 1
        outcome = "hang"
    elif code == ACCEPTED:
        tally.accepted += 1
    elif code == CLEAN:
        tally.clean += 1
    else:
        tally.crash += 1
        outcome = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
    if hung or code not in (ACCEPTED, CLEAN):
        what = _read(case_dir / "case.txt").strip()
        last = _read(case_dir / "traceback.txt").strip().splitlines()[-1:] or [""]
        if len(tally.examples) < 20:
            tally.examples.append(f"case {index} ({what}): {outcome} {last[0]}")
        if keep_dir is not None:
            shutil.copytree(case_dir, keep_dir / case_dir.name, dirs_exist_ok=True)
    shutil.rmtree(case_dir, ignore_errors=True)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def run(name: str, n: int, seed: int = 0, jobs: int | None = None, timeout: float = 10.0, keep: Path | None = None,
        memory_limit_mib: int = 4096, first: int = 0, progress: bool = False) -> dict:
    """Runs cases first..first+n-1 of one target; its tally (tried, accepted, clean, crash, hang, examples, seconds)."""
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="dllama-fuzz-") as tmp:
        tally = fuzz(name, n, seed, jobs or os.cpu_count() or 1, timeout, Path(tmp), keep, memory_limit_mib << 20,
                     first, progress)
    return tally.as_dict() | {"seconds": round(time.monotonic() - start, 1)}


def print_counts(name: str, r: dict):
    print(f"{name}: tried {r['tried']}, accepted {r['accepted']}, clean error {r['clean']}, crash {r['crash']}, "
          f"hang {r['hang']} ({r['seconds']:.0f} s)")
    for example in r["examples"]:
        print(f"    {example}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("targets", nargs="*", metavar="TARGET", help=f"some of {', '.join(TARGETS)} (default: all)")
    ap.add_argument("-n", "--cases", type=int, default=10_000, help="cases per target (default 10,000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", type=int, default=None, help="run only this case index (with --keep to see it)")
    ap.add_argument("--jobs", type=int, default=None, help="cases run at once (default: one per core)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds before a case counts as a hang")
    ap.add_argument("--memory-limit", type=int, default=4096, help="address-space limit per case, MiB (0: none)")
    ap.add_argument("--keep", type=Path, default=None, help="copy the inputs of crashes and hangs here")
    ap.add_argument("--json", action="store_true", help="print the tallies as JSON")
    args = ap.parse_args(argv)
    names = args.targets or list(TARGETS)
    unknown = [n for n in names if n not in TARGETS]
    if unknown:
        ap.error(f"unknown target {unknown[0]!r} (choose from {', '.join(TARGETS)})")
    results = {name: run(name, 1 if args.case is not None else args.cases, args.seed, args.jobs, args.timeout,
                         args.keep, args.memory_limit, args.case or 0, progress=not args.json) for name in names}
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        for name, r in results.items():
            print_counts(name, r)
    return 0 if all(r["crash"] == 0 and r["hang"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
