"""HF checkpoint directory or GGUF file -> .m model file (plus the tokenizer bundle beside it).

Tensors are streamed one at a time (large ones in row chunks) from memory-mapped safetensors, so
peak memory stays around one chunk whatever the model size. The output is written to a temporary
file and renamed at the end: an interrupted run never leaves a half-written model under the name.
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from . import tokenizer as tokenizer_bundle
from .architectures import TensorSpec, default_tensor_type, place_tensors, plan_conversion
from .gguf_import import GGUFCheckpoint, is_gguf
from .model_file import FloatType, encode_header
from .safetensors_reader import Checkpoint, CheckpointError
from .tensor_lists import RowPermutation

CHUNK_BYTES = 64 << 20  # float32 bytes converted at once
Q80_AT_Q40 = ("lm_head", "k", "v", "kv_a")  # tensors (last name part) kept at Q80 in a Q40 file: see storage_type


@dataclass
class ConversionReport:
    path: Path
    tokenizer_path: Path | None
    n_tensors: int
    n_bytes: int
    seconds: float
    skipped: list[str]


def encode_tensor(values: np.ndarray, dtype: FloatType, pure: bool = False) -> bytes:
    """Bytes of float32 values in a .m storage type. Q40 blocks get the scale that minimises each block's
    error, unless `pure`: then distributed-llama's own rule, byte for byte."""
    from . import _core

    rows = np.ascontiguousarray(values, dtype=np.float32)
    rows = rows.reshape(-1, rows.shape[-1] if rows.ndim else 1)
    flat = rows.reshape(-1)
    if dtype == FloatType.F32:
        return flat.astype("<f4").tobytes()
    if dtype == FloatType.F16:
        return flat.astype("<f2").tobytes()
    if dtype == FloatType.Q40:
        return _core.quantize_q40(flat) if pure else _core.quantize_q40_best_fit(rows)
    return _core.quantize_q80(flat)


def storage_type(spec: TensorSpec, weight_type: FloatType, pure: bool = False) -> FloatType:
    """The type the converter stores a tensor in: the one place that decides it.

    The architecture's rule (default_tensor_type), with two exceptions, each recorded in a per-tensor
    header key:
    - a quantized tensor's rows must be whole 32-value blocks: a tensor with another column count (e.g. an
      MLA q_b over a q_lora_rank of 48) is stored at F16, as llama.cpp falls back, rather than written
      into a file the engine must refuse;
    - at Q40 the output head (which is the embedding table in models that tie them) stays at Q80, as
      llama.cpp keeps it at higher precision: 4-bit logits are the main loss of small models; so do the
      projections whose outputs fill the KV cache (attention k and v, MLA's kv_a), which every later
      token reads again and which are small next to the rest (a few % of a GQA model). `pure` stores
      them at Q40 like every other matrix (the file then has distributed-llama's layout exactly)."""
    dtype = default_tensor_type(spec, weight_type)
    if dtype == FloatType.Q40 and not pure and spec.name.split(".")[-1] in Q80_AT_Q40:
        dtype = FloatType.Q80
    if spec.cols % dtype.block_size:
        return FloatType.F16
    return dtype


def _source_name(spec: TensorSpec, ckpt: Checkpoint) -> str:
    if spec.source in ckpt:
        return spec.source
    if spec.fallback and spec.fallback in ckpt:
        return spec.fallback
    raise CheckpointError(f"{ckpt.directory}: missing tensor {spec.source!r} (needed for {spec.name})")


def _check_shape(spec: TensorSpec, name: str, ckpt: Checkpoint):
    shape = ckpt.shape(name)
    if spec.source_rows:  # a row range of a fused tensor: it must at least hold those rows
        lo, hi = spec.source_rows
        ok = shape[0] >= hi and (len(shape) == 1 and spec.rows == 1 and hi - lo == spec.cols
                                 or len(shape) == 2 and hi - lo == spec.rows and shape[1] == spec.cols)
        expected = f"rows {lo}..{hi} of a tensor with {spec.cols} columns" if spec.rows > 1 else f"at least {hi} values"
    elif spec.source_shape:
        ok, expected = shape == spec.source_shape, str(list(spec.source_shape))
    else:
        ok = shape == ((spec.cols,) if spec.rows == 1 else (spec.rows, spec.cols)) or (spec.rows == 1 and shape == (1, spec.cols))
        expected = str([spec.rows, spec.cols] if spec.rows > 1 else [spec.cols])
    if not ok:
        raise CheckpointError(f"{ckpt.directory}: tensor {name!r} has shape {list(shape)}, expected {expected} "
                              f"(for {spec.name})")


@dataclass
class Source:
    """What a conversion reads: the HF-style config, the tensors by HF name, and the tokenizer bundle."""

    config: dict
    tensors: Checkpoint | GGUFCheckpoint
    tokenizer_bundle: Callable[[], dict | None]


def open_source(path: Path) -> Source:
    """An HF checkpoint directory, or a GGUF file."""
    if is_gguf(path):
        ckpt = GGUFCheckpoint(path)
        return Source(ckpt.config, ckpt, ckpt.tokenizer_bundle)
    config_path = path / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {path} a Hugging Face checkpoint directory or a GGUF file?")
    config = json.loads(config_path.read_text())
    has_tokenizer = (path / "tokenizer.json").exists()
    return Source(config, Checkpoint(path), lambda: tokenizer_bundle.build_bundle(path) if has_tokenizer else None)


def convert(hf_dir: str | os.PathLike, out_path: str | os.PathLike, dtype: str = "q40", progress: bool = True,
            log=print, pure: bool = False) -> ConversionReport:
    """Convert an HF checkpoint directory or a GGUF file to a .m file at `dtype`. `pure`: every matrix at
    `dtype` with distributed-llama's quantizer (see storage_type and encode_tensor)."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    source = open_source(hf_dir)
    config = source.config
    plan = plan_conversion(config)
    arch, model_type = plan.arch, config["model_type"]
    weight_type = FloatType.parse(dtype)
    specs = plan.tensors(weight_type)
    types = [storage_type(spec, weight_type, pure) for spec in specs]
    other_types = {i: t for i, (spec, t) in enumerate(zip(specs, types)) if t != default_tensor_type(spec, weight_type)}
    header = encode_header(dict(plan.params, weights_float_type=int(weight_type)), other_types)
    placed = place_tensors(specs, types, len(header))

    with source.tensors as ckpt:
        bundle = source.tokenizer_bundle()  # before writing anything: a bad tokenizer leaves no model behind
        sources = []
        for spec in specs:
            name = _source_name(spec, ckpt)
            _check_shape(spec, name, ckpt)
            sources.append(name)
        skipped = ckpt.unused(sources)
        total = placed[-1].offset + placed[-1].nbytes
        log(f"Converting {hf_dir} ({model_type} -> {arch.builder}, {weight_type.name}) to {out_path}: "
            f"{len(specs)} tensors, {total / 1e6:,.1f} MB")
        if other_types:
            examples = ", ".join(f"{specs[i].name} as {t.name}" for i, t in list(other_types.items())[:3])
            log(f"{len(other_types)} tensor(s) stored in another type than the rule's (`dllama-py inspect` lists them), "
                f"e.g. {examples}")
        extra_layers = sorted({layer for n in skipped if (layer := _layer_of(n)) is not None
                               and layer >= plan.params["n_layers"]})
        if extra_layers:
            log(f"Skipping layer(s) {', '.join(map(str, extra_layers))} past num_hidden_layers "
                f"(multi-token-prediction weights, not used for generation)")
        if skipped:
            log(f"Skipping {len(skipped)} checkpoint tensors the model does not use, e.g. {skipped[0]}")

        tmp_path = out_path.with_name(out_path.name + ".partial")
        # Bytes written out of the file's size, so the bar ends at exactly 100% and its ETA follows the
        # large tensors; on a terminal only (disable=None), unless progress is off.
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=out_path.name, leave=True,
                   disable=None if progress else True, dynamic_ncols=True, file=sys.stderr)
        start = time.monotonic()
        try:
            with open(tmp_path, "wb") as f:
                f.write(header)
                for i, (spec, pt, name) in enumerate(zip(specs, placed, sources), 1):
                    _write_tensor(f, ckpt, spec, name, pt.dtype, pure)
                    if f.tell() != pt.offset + pt.nbytes:
                        raise RuntimeError(f"internal error: {spec.name} ended at {f.tell()}, expected {pt.offset + pt.nbytes}")
                    bar.set_postfix_str(f"{i}/{len(specs)} tensors", refresh=False)
                    bar.update(f.tell() - bar.n)
            os.replace(tmp_path, out_path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
        seconds = time.monotonic() - start

    tok_path = None
    if bundle is not None:
        tok_path = tokenizer_bundle.bundle_path(out_path)
        tokenizer_bundle.write_bundle(bundle, tok_path)
    else:
        log(f"Warning: {hf_dir} has no tokenizer; the model will need token ids, not text")
    log(f"Wrote {out_path} ({total / 1e6:,.1f} MB in {seconds:.1f} s, {total / 1e6 / max(seconds, 1e-9):,.0f} MB/s)")
    return ConversionReport(out_path, tok_path, len(specs), total, seconds, skipped)


def _layer_of(name: str) -> int | None:
    """The layer index in an HF ("model.layers.N.") or GGUF ("blk.N.") tensor name."""
    parts = name.split(".")
    if name.startswith("model.layers.") and parts[2].isdigit():
        return int(parts[2])
    if name.startswith("blk.") and parts[1].isdigit():
        return int(parts[1])
    return None


def _write_tensor(f, ckpt: Checkpoint | GGUFCheckpoint, spec: TensorSpec, name: str, dtype: FloatType, pure: bool):
    first, last = spec.source_rows or (0, spec.rows)
    if (ckpt.stored_type(name) == dtype and spec.source_shape is None
            and (spec.transform is None or isinstance(spec.transform, RowPermutation))):
        # Already in this encoding (e.g. a GGUF's Q4_0 blocks for Q40): copy the bytes, reordering rows if asked.
        if spec.transform is not None:
            f.write(spec.transform(ckpt.read_stored(name, first, last)).tobytes())
            return
        rows_per_chunk = max(1, CHUNK_BYTES // dtype.nbytes(spec.cols))
        for r0 in range(first, last, rows_per_chunk):
            f.write(ckpt.read_stored(name, r0, min(last, r0 + rows_per_chunk)).tobytes())
        return
    if spec.transform is not None or spec.rows == 1:
        values = ckpt.read(name, *spec.source_rows) if spec.source_rows else ckpt.read(name)
        if spec.transform is not None:
            values = spec.transform(values.reshape(spec.source_shape or (spec.rows, spec.cols)))
        values = values.reshape(spec.rows, spec.cols)
        f.write(encode_tensor(values, dtype, pure))
        return
    rows_per_chunk = max(1, CHUNK_BYTES // (4 * spec.cols))
    for r0 in range(first, last, rows_per_chunk):
        f.write(encode_tensor(ckpt.read(name, r0, min(last, r0 + rows_per_chunk)), dtype, pure))
