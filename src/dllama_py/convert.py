"""HF checkpoint directory -> .m model file (plus the tokenizer bundle beside it).

Tensors are streamed one at a time (large ones in row chunks) from memory-mapped safetensors, so
peak memory stays around one chunk whatever the model size. The model and its tokenizer bundle are
written to temporary files and renamed at the end, the bundle first: an interrupted or failed run never
leaves a half-written model under the name, nor a new model beside an old bundle.

Bad input (a config, safetensors file or tokenizer that cannot be used) raises one of CONVERSION_ERRORS,
naming the file and the key or tensor.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import tokenizer as tokenizer_bundle
from .architectures import TensorSpec, UnsupportedModelError, default_tensor_type, place_tensors, plan_conversion
from .header_rules import check_header
from .model_file import FloatType, ModelFileError, encode_header
from .safetensors_reader import Checkpoint, CheckpointError
from .tokenizer import TokenizerError

CHUNK_BYTES = 64 << 20  # float32 bytes converted at once
CONVERSION_ERRORS = (UnsupportedModelError, CheckpointError, TokenizerError)
# The largest magnitude each storage type holds (F16's largest value; Q40 and Q80 keep an F16 scale of
# max|x| / 8 and max|x| / 127 per block).
F16_MAX = 65504.0
MAX_MAGNITUDE = {FloatType.F32: np.finfo(np.float32).max, FloatType.F16: F16_MAX, FloatType.Q40: F16_MAX * 8,
                 FloatType.Q80: F16_MAX * 127}


@dataclass
class ConversionReport:
    path: Path
    tokenizer_path: Path | None
    n_tensors: int
    n_bytes: int
    seconds: float
    skipped: list[str]


def encode_tensor(values: np.ndarray, dtype: FloatType) -> bytes:
    """Bytes of float32 values in a .m storage type."""
    from . import _core

    flat = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
    if dtype == FloatType.F32:
        return flat.astype("<f4").tobytes()
    if dtype == FloatType.F16:
        return flat.astype("<f2").tobytes()
    if dtype == FloatType.Q40:
        return _core.quantize_q40(flat)
    return _core.quantize_q80(flat)


def storage_type(spec: TensorSpec, weight_type: FloatType) -> FloatType:
    """The type the converter stores a tensor in: the one place that decides it.

    The architecture's rule (default_tensor_type), except that a quantized tensor's rows must be whole
    32-value blocks: a tensor with another column count (e.g. an MLA q_b over a q_lora_rank of 48) is
    stored at F16, as llama.cpp falls back, rather than written into a file the engine must refuse.
    Tensors whose type differs from the rule get a per-tensor header key."""
    dtype = default_tensor_type(spec, weight_type)
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


def read_config(hf_dir: Path) -> dict:
    config_path = hf_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: is {hf_dir} a Hugging Face checkpoint directory?")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: bad JSON or UTF-8
        raise CheckpointError(f"{config_path}: cannot be read as JSON: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{config_path}: not a JSON object")
    return config


def convert(hf_dir: str | os.PathLike, out_path: str | os.PathLike, dtype: str = "q40", progress: bool = True,
            log=print, mtp: bool = True) -> ConversionReport:
    """mtp: keep the multi-token-prediction layer of checkpoints that have one (GLM-4.5 and later), for
    speculative decoding with draft="mtp". It is one more layer (about 2% of GLM-4.5-Air's or
    GLM-4.7-Flash's weights), and the engine loads it into memory only when asked to draft with it."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    config = read_config(hf_dir)
    weight_type = FloatType.parse(dtype)
    try:
        plan = plan_conversion(config, mtp)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{hf_dir}: {e}") from None
    with Checkpoint(hf_dir) as ckpt:
        params = dict(plan.params, weights_float_type=int(weight_type))
        try:  # the loader's own rules; the counts must fit the checkpoint before a list of every tensor is built
            check_header(params, plan.arch, "the .m header it gives", 8 * ckpt.n_values(),
                         "bytes in the checkpoint's tensors as F32, counting a tied output head twice")
        except ModelFileError as e:
            raise UnsupportedModelError(f"{hf_dir}: {e}") from None
        if plan.params.get("n_mtp_layers"):
            mtp_layer = f"layers.{plan.params['n_layers']}."
            missing = [t.source for t in plan.tensors(weight_type) if t.name.startswith(mtp_layer) and t.source not in ckpt]
            if missing:
                log(f"config.json declares a multi-token-prediction layer but the checkpoint lacks {missing[0]} "
                    f"(and {len(missing) - 1} more of its tensors): converting without it")
                plan = plan_conversion(config, mtp=False)
                params = dict(plan.params, weights_float_type=int(weight_type))
        specs = plan.tensors(weight_type)
        types = [storage_type(spec, weight_type) for spec in specs]
        other_types = {i: t for i, (spec, t) in enumerate(zip(specs, types)) if t != default_tensor_type(spec, weight_type)}
        header = encode_header(params, other_types)
        placed = place_tensors(specs, types, len(header))
        arch, model_type = plan.arch, config["model_type"]
        # The tokenizer before the long part: a checkpoint whose tokenizer fails is refused at once.
        bundle = tokenizer_bundle.build_bundle(hf_dir) if (hf_dir / "tokenizer.json").exists() else None

        sources = []
        for spec in specs:
            name = _source_name(spec, ckpt)
            _check_shape(spec, name, ckpt)
            sources.append(name)
        used = set(sources)
        skipped = sorted(n for n in ckpt.names() if n not in used)
        total = placed[-1].offset + placed[-1].nbytes
        log(f"Converting {hf_dir} ({model_type} -> {arch.builder}, {weight_type.name}) to {out_path}: "
            f"{len(specs)} tensors, {total / 1e6:,.1f} MB")
        if other_types:
            examples = ", ".join(f"{specs[i].name} as {t.name}" for i, t in list(other_types.items())[:3])
            log(f"{len(other_types)} tensor(s) stored in another type than the rule's (`dllama-py inspect` lists them), "
                f"e.g. {examples}")
        kept_layers = plan.params["n_layers"] + plan.params.get("n_mtp_layers", 0)
        extra_layers = sorted({int(m[1]) for m in map(re.compile(r"model\.layers\.(\d+)\.").match, skipped)
                               if m and int(m[1]) >= kept_layers})
        if plan.params.get("n_mtp_layers"):
            log(f"Keeping layer {plan.params['n_layers']}, the multi-token-prediction layer (for draft='mtp'; "
                "--no-mtp leaves it out)")
        if extra_layers:
            log(f"Skipping layer(s) {', '.join(map(str, extra_layers))} past num_hidden_layers "
                f"(multi-token-prediction weights, not used for generation)")
        if skipped:
            log(f"Skipping {len(skipped)} checkpoint tensors the model does not use, e.g. {skipped[0]}")

        tmp_path = out_path.with_name(out_path.name + ".partial")
        tok_path = tokenizer_bundle.bundle_path(out_path)
        tmp_tok_path = tok_path.with_name(tok_path.name + ".partial")
        # Bytes written out of the file's size, so the bar ends at exactly 100% and its ETA follows the
        # large tensors; on a terminal only (disable=None), unless progress is off.
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1000, desc=out_path.name, leave=True,
                   disable=None if progress else True, dynamic_ncols=True, file=sys.stderr)
        start = time.monotonic()
        try:
            with open(tmp_path, "wb") as f:
                f.write(header)
                for i, (spec, pt, name) in enumerate(zip(specs, placed, sources), 1):
                    _write_tensor(f, ckpt, spec, name, pt.dtype)
                    if f.tell() != pt.offset + pt.nbytes:
                        raise RuntimeError(f"internal error: {spec.name} ended at {f.tell()}, expected {pt.offset + pt.nbytes}")
                    bar.set_postfix_str(f"{i}/{len(specs)} tensors", refresh=False)
                    bar.update(f.tell() - bar.n)
            if bundle is not None:
                tokenizer_bundle.write_bundle(bundle, tmp_tok_path)
            _install(tmp_path, out_path, tmp_tok_path if bundle is not None else None, tok_path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            tmp_tok_path.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
        seconds = time.monotonic() - start

    if bundle is None:
        tok_path = None
        log(f"Warning: {hf_dir} has no tokenizer.json; the model will need token ids, not text")
    log(f"Wrote {out_path} ({total / 1e6:,.1f} MB in {seconds:.1f} s, {total / 1e6 / max(seconds, 1e-9):,.0f} MB/s)")
    return ConversionReport(out_path, tok_path, len(specs), total, seconds, skipped)


def _install(model_tmp: Path, model: Path, bundle_tmp: Path | None, bundle: Path):
    """Renames the new model and bundle into place, removing the old bundle when the new model has none.
    If a rename fails the old bundle is put back, so that a model and a bundle from different
    conversions never stand side by side."""
    saved = bundle.with_name(bundle.name + ".old")
    had_bundle = bundle.exists()
    if had_bundle:
        os.replace(bundle, saved)
    try:
        if bundle_tmp is not None:
            os.replace(bundle_tmp, bundle)
        os.replace(model_tmp, model)
    except BaseException:
        bundle.unlink(missing_ok=True)
        if had_bundle:
            os.replace(saved, bundle)
        raise
    saved.unlink(missing_ok=True)


def _write_tensor(f, ckpt: Checkpoint, spec: TensorSpec, name: str, dtype: FloatType):
    first, last = spec.source_rows or (0, spec.rows)
    if spec.transform is not None or spec.rows == 1:
        values = ckpt.read(name, *spec.source_rows) if spec.source_rows else ckpt.read(name)
        if spec.transform is not None:
            values = spec.transform(values.reshape(spec.source_shape or (spec.rows, spec.cols)))
        values = values.reshape(spec.rows, spec.cols)
        f.write(encode_tensor(_check_values(values, ckpt, name, dtype), dtype))
        return
    rows_per_chunk = max(1, CHUNK_BYTES // (4 * spec.cols))
    for r0 in range(first, last, rows_per_chunk):
        values = ckpt.read(name, r0, min(last, r0 + rows_per_chunk))
        f.write(encode_tensor(_check_values(values, ckpt, name, dtype), dtype))


def _check_values(values: np.ndarray, ckpt: Checkpoint, name: str, dtype: FloatType) -> np.ndarray:
    """Refuses NaN, infinities and values the storage type would turn into infinities."""
    largest = float(np.abs(values).max(initial=0.0))  # NaN when any value is NaN
    if not np.isfinite(largest):
        raise CheckpointError(f"{ckpt.directory}: tensor {name!r} holds NaN or infinite values")
    if largest > MAX_MAGNITUDE[dtype]:
        raise CheckpointError(f"{ckpt.directory}: tensor {name!r} holds values up to {largest:g}, more than "
                              f"{dtype.name} can store ({MAX_MAGNITUDE[dtype]:g}); convert with --dtype f32")
    return values
