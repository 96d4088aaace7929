"""HF checkpoint directory or GGUF file -> .m model file (plus the tokenizer bundle beside it).

Tensors are streamed one at a time (large ones in row chunks) from memory-mapped safetensors, so
peak memory stays around one chunk whatever the model size. The model and its tokenizer bundle are
written to temporary files and renamed at the end, the bundle first: an interrupted or failed run never
leaves a half-written model under the name, nor a new model beside an old bundle.

Bad input (a config, safetensors or GGUF file or tokenizer that cannot be used) raises one of
CONVERSION_ERRORS, naming the file and the key or tensor.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from tqdm import tqdm

from . import tokenizer as tokenizer_bundle
from .architectures import (
    ConversionPlan,
    ModelLayout,
    PlacedTensor,
    TensorSpec,
    UnsupportedModelError,
    default_tensor_type,
    place_tensors,
    plan_conversion,
)
from .gguf_import import GGUFCheckpoint, is_gguf
from .header_rules import check_header
from .json_files import read_json_object
from .model_file import FloatType, Header, ModelFileError, encode_header
from .safetensors_reader import Checkpoint, CheckpointError
from .tensor_lists import RowPermutation
from .tokenizer import TokenizerError

CHUNK_BYTES = 64 << 20  # float32 bytes converted at once
Q80_AT_Q40 = ("lm_head", "k", "v", "kv_a")  # tensors (last name part) kept at Q80 in a Q40 file: see storage_type
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


def more_bits_layer(layer: int, n_layers: int) -> bool:
    """The layers whose FFN down projection a Q40 file keeps at Q80: the first and last eighth and every
    third layer between (the layers llama.cpp's K-quant mixes give more bits, `use_more_bits`)."""
    return layer < n_layers // 8 or layer >= 7 * n_layers // 8 or (layer - n_layers // 8) % 3 == 2


def storage_type(spec: TensorSpec, weight_type: FloatType, n_layers: int, pure: bool = False) -> FloatType:
    """The type the converter stores a tensor in: the one place that decides it.

    The architecture's rule (default_tensor_type), with two exceptions, each recorded in a per-tensor
    header key:
    - a quantized tensor's rows must be whole 32-value blocks: a tensor with another column count (e.g. an
      MLA q_b over a q_lora_rank of 48) is stored at F16, as llama.cpp falls back, rather than written
      into a file the engine must refuse;
    - at Q40 the output head (which is the embedding table in models that tie them) stays at Q80, as
      llama.cpp keeps it at higher precision: 4-bit logits are the main loss of small models; so do the
      projections whose outputs fill the KV cache (attention k and v, MLA's kv_a), which every later
      token reads again and which are small next to the rest (a few % of a GQA model); and the dense FFN's
      down projection in the layers of more_bits_layer, the matrix whose 4-bit error costs the most
      (SmolLM2: top-1 agreement 0.773 -> 0.848, docs/benchmarks.md; MoE experts stay at Q40, so a MoE's
      bytes barely change). `pure` stores them at Q40 like every other matrix (the file then has
      distributed-llama's layout exactly)."""
    dtype = default_tensor_type(spec, weight_type)
    if dtype == FloatType.Q40 and not pure:
        parts = spec.name.split(".")
        if parts[-1] in Q80_AT_Q40 or (spec.name.endswith(".ffn.down") and more_bits_layer(int(parts[1]), n_layers)):
            dtype = FloatType.Q80
    if spec.cols % dtype.block_size:
        return FloatType.F16
    return dtype


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
        raise FileNotFoundError(f"{config_path} not found: is {hf_dir} a Hugging Face checkpoint directory or a GGUF file?")
    return read_json_object(config_path, CheckpointError)


@dataclass
class Source:
    """What a conversion reads: the HF-style config, the tensors by HF name, and the tokenizer bundle."""

    config: dict
    open_tensors: Callable[[], Checkpoint | GGUFCheckpoint]
    tokenizer_bundle: Callable[[], dict | None]


def open_source(path: Path) -> Source:
    """An HF checkpoint directory, or a GGUF file."""
    if is_gguf(path):
        ckpt = GGUFCheckpoint(path)
        return Source(ckpt.config, lambda: ckpt, ckpt.tokenizer_bundle)
    config = read_config(path)
    block = fp8_block_size(config, path / "config.json")
    has_tokenizer = (path / "tokenizer.json").exists()
    return Source(config, lambda: Checkpoint(path, weight_block_size=block),
                  lambda: tokenizer_bundle.build_bundle(path) if has_tokenizer else None)


def fp8_block_size(config: dict, where) -> tuple[int, int] | None:
    """The FP8 scale block of a checkpoint whose config says quantization_config.quant_method "fp8"
    (None: not quantized, or blocks to infer from the shapes); other quantizations are refused."""
    quant = config.get("quantization_config")
    if not quant:
        return None
    if quant.get("quant_method") != "fp8":
        raise UnsupportedModelError(f"{where}: quantization_config.quant_method {quant.get('quant_method')!r} is not "
                                    "supported (only fp8, or unquantized checkpoints)")
    block = quant.get("weight_block_size")
    return (int(block[0]), int(block[1])) if block else None


@dataclass
class FilePlan:
    """What the .m file for a config at a dtype holds: its header and every tensor's type and place.
    The converter writes it, `pull` preallocates and fills it, `list` sizes models by it."""

    config: dict
    conversion: ConversionPlan
    weight_type: FloatType
    pure: bool
    header: bytes
    placed: list[PlacedTensor]
    other_types: dict[int, FloatType]  # tensor index -> type, where storage_type departs from the rule

    @property
    def size(self) -> int:
        return self.placed[-1].offset + self.placed[-1].nbytes

    def layout(self, path: str | os.PathLike = "") -> ModelLayout:
        """The layout read_layout would find in the written file."""
        params = dict(self.conversion.params, weights_float_type=int(self.weight_type))
        return ModelLayout(Path(path), self.conversion.arch, Header(params, len(self.header), self.other_types),
                           self.weight_type, self.placed)

    def source_names(self, has) -> list[str]:
        """The checkpoint tensor each .m tensor is made from, given `has(name)`; names the first missing one."""
        names = []
        for pt in self.placed:
            spec = pt.spec
            if has(spec.source):
                names.append(spec.source)
            elif spec.fallback and has(spec.fallback):
                names.append(spec.fallback)
            else:
                raise CheckpointError(f"missing tensor {spec.source!r} (needed for {spec.name})")
        return names


def plan_file(config: dict, dtype: str, pure: bool = False, where: str = "config.json",
              tensor_bytes: tuple[int, str] | None = None, mtp: bool = True) -> FilePlan:
    """The file for `config` at `dtype`. tensor_bytes: (the most bytes the tensors can take, what that
    is): the header's counts are checked against it by the loader's own rules before a list with one
    entry per tensor is built (a hostile config cannot make that list huge). mtp: keep the
    multi-token-prediction layer the config declares (see convert)."""
    weight_type = FloatType.parse(dtype)
    try:
        conversion = plan_conversion(config, mtp)
        params = dict(conversion.params, weights_float_type=int(weight_type))
        check_header(params, conversion.arch, "the .m header it gives", *(tensor_bytes or ()))
    except (UnsupportedModelError, ModelFileError) as e:
        raise UnsupportedModelError(f"{where}: {e}") from None
    specs = conversion.tensors(weight_type)
    types = [storage_type(spec, weight_type, conversion.params["n_layers"], pure) for spec in specs]
    other_types = {i: t for i, (spec, t) in enumerate(zip(specs, types)) if t != default_tensor_type(spec, weight_type)}
    header = encode_header(dict(conversion.params, weights_float_type=int(weight_type)), other_types)
    return FilePlan(config, conversion, weight_type, pure, header, place_tensors(specs, types, len(header)), other_types)


def without_missing_mtp(plan: FilePlan, has, log, **plan_args) -> FilePlan:
    """The plan again without its multi-token-prediction layer when the checkpoint (`has(name)`) lacks it."""
    p = plan.conversion.params
    if not p.get("n_mtp_layers"):
        return plan
    mtp_layer = f"layers.{p['n_layers']}."
    missing = [pt.spec.source for pt in plan.placed if pt.spec.name.startswith(mtp_layer) and not has(pt.spec.source)]
    if not missing:
        return plan
    log(f"config.json declares a multi-token-prediction layer but the checkpoint lacks {missing[0]} "
        f"(and {len(missing) - 1} more of its tensors): converting without it")
    return plan_file(plan.config, plan.weight_type.name.lower(), plan.pure, mtp=False, **plan_args)


def describe_skipped(plan: FilePlan, skipped: list[str], log):
    """Says which checkpoint tensors a conversion leaves out (multi-token-prediction layers, others)."""
    if plan.other_types:
        examples = ", ".join(f"{plan.placed[i].spec.name} as {t.name}" for i, t in list(plan.other_types.items())[:3])
        log(f"{len(plan.other_types)} tensor(s) stored in another type than the rule's (`dllama-py inspect` lists "
            f"them), e.g. {examples}")
    p = plan.conversion.params
    extra_layers = sorted({layer for n in skipped if (layer := _layer_of(n)) is not None
                           and layer >= p["n_layers"] + p.get("n_mtp_layers", 0)})
    if p.get("n_mtp_layers"):
        log(f"Keeping layer {p['n_layers']}, the multi-token-prediction layer (for draft='mtp'; --no-mtp leaves it out)")
    if extra_layers:
        log(f"Skipping layer(s) {', '.join(map(str, extra_layers))} past num_hidden_layers "
            f"(multi-token-prediction weights, not used for generation)")
    if skipped:
        log(f"Skipping {len(skipped)} checkpoint tensors the model does not use, e.g. {skipped[0]}")


def convert(hf_dir: str | os.PathLike, out_path: str | os.PathLike, dtype: str = "q40", progress: bool = True,
            log=print, pure: bool = False, mtp: bool = True) -> ConversionReport:
    """Convert an HF checkpoint directory or a GGUF file to a .m file at `dtype`. `pure`: every matrix at
    `dtype` with distributed-llama's quantizer (see storage_type and encode_tensor). mtp: keep the
    multi-token-prediction layer of checkpoints that have one (GLM-4.5 and later), for speculative
    decoding with draft="mtp". It is one more layer (about 2% of GLM-4.5-Air's or GLM-4.7-Flash's
    weights), and the engine loads it into memory only when asked to draft with it."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    source = open_source(hf_dir)
    try:  # an unsupported model is refused before its tensors are opened
        plan_conversion(source.config, mtp)
    except UnsupportedModelError as e:
        raise UnsupportedModelError(f"{hf_dir}: {e}") from None
    with source.open_tensors() as ckpt:
        bound = dict(where=str(hf_dir), tensor_bytes=(
            8 * ckpt.n_values(), "bytes in the checkpoint's tensors as F32, counting a tied output head twice"))
        plan = plan_file(source.config, dtype, pure, mtp=mtp, **bound)
        plan = without_missing_mtp(plan, lambda name: name in ckpt, log, **bound)
        specs = [pt.spec for pt in plan.placed]
        # The tokenizer before the long part: a checkpoint whose tokenizer fails is refused at once.
        bundle = source.tokenizer_bundle()
        try:
            sources = plan.source_names(lambda name: name in ckpt)
        except CheckpointError as e:
            raise CheckpointError(f"{ckpt.directory}: {e}") from None
        for pt, name in zip(plan.placed, sources):
            _check_shape(pt.spec, name, ckpt)
        skipped = ckpt.unused(sources)
        total = plan.size
        log(f"Converting {hf_dir} ({source.config['model_type']} -> {plan.conversion.arch.builder}, "
            f"{plan.weight_type.name}) to {out_path}: {len(specs)} tensors, {total / 1e6:,.1f} MB")
        describe_skipped(plan, skipped, log)

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
                f.write(plan.header)
                for i, (pt, name) in enumerate(zip(plan.placed, sources), 1):
                    write_tensor(f, ckpt, pt, name, pure)
                    bar.set_postfix_str(f"{i}/{len(specs)} tensors", refresh=False)
                    bar.update(f.tell() - bar.n)
            if bundle is not None:
                tokenizer_bundle.write_bundle(bundle, tmp_tok_path)
            install(tmp_path, out_path, tmp_tok_path if bundle is not None else None, tok_path)
        except BaseException:
            tmp_path.unlink(missing_ok=True)
            tmp_tok_path.unlink(missing_ok=True)
            raise
        finally:
            bar.close()
        seconds = time.monotonic() - start

    if bundle is None:
        tok_path = None
        log(f"Warning: {hf_dir} has no tokenizer; the model will need token ids, not text")
    log(f"Wrote {out_path} ({total / 1e6:,.1f} MB in {seconds:.1f} s, {total / 1e6 / max(seconds, 1e-9):,.0f} MB/s)")
    return ConversionReport(out_path, tok_path, len(specs), total, seconds, skipped)


def install(model_tmp: Path, model: Path, bundle_tmp: Path | None, bundle: Path):
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


def _layer_of(name: str) -> int | None:
    """The layer index in an HF ("model.layers.N.") or GGUF ("blk.N.") tensor name."""
    parts = name.split(".")
    if name.startswith("model.layers.") and parts[2].isdigit():
        return int(parts[2])
    if name.startswith("blk.") and parts[1].isdigit():
        return int(parts[1])
    return None


def write_tensor(f, ckpt: Checkpoint | GGUFCheckpoint, pt: PlacedTensor, name: str, pure: bool):
    """Writes one tensor, read from checkpoint tensor `name`, at its place in the .m file `f`."""
    f.seek(pt.offset)
    _encode_into(f, ckpt, pt.spec, name, pt.dtype, pure)
    if f.tell() != pt.offset + pt.nbytes:
        raise RuntimeError(f"internal error: {pt.spec.name} ended at {f.tell()}, expected {pt.offset + pt.nbytes}")


def _encode_into(f, ckpt: Checkpoint | GGUFCheckpoint, spec: TensorSpec, name: str, dtype: FloatType, pure: bool):
    first, last = spec.source_rows or (0, spec.rows)
    if (ckpt.stored_type(name) == dtype and spec.source_shape is None
            and (spec.transform is None or isinstance(spec.transform, RowPermutation))):
        # Already in this encoding (e.g. a GGUF's Q4_0 blocks for Q40): copy the bytes, reordering rows if asked.
        if spec.transform is not None:
            f.write(spec.transform(_check_stored(ckpt.read_stored(name, first, last), ckpt, name, dtype)).tobytes())
            return
        rows_per_chunk = max(1, CHUNK_BYTES // dtype.nbytes(spec.cols))
        for r0 in range(first, last, rows_per_chunk):
            f.write(_check_stored(ckpt.read_stored(name, r0, min(last, r0 + rows_per_chunk)), ckpt, name, dtype).tobytes())
        return
    if spec.transform is not None or spec.rows == 1:
        values = ckpt.read(name, *spec.source_rows) if spec.source_rows else ckpt.read(name)
        if spec.transform is not None:
            values = spec.transform(values.reshape(spec.source_shape or (spec.rows, spec.cols)))
        values = values.reshape(spec.rows, spec.cols)
        f.write(encode_tensor(_check_values(values, ckpt, name, dtype), dtype, pure))
        return
    rows_per_chunk = max(1, CHUNK_BYTES // (4 * spec.cols))
    for r0 in range(first, last, rows_per_chunk):
        values = ckpt.read(name, r0, min(last, r0 + rows_per_chunk))
        f.write(encode_tensor(_check_values(values, ckpt, name, dtype), dtype, pure))


def _check_values(values: np.ndarray, ckpt, name: str, dtype: FloatType) -> np.ndarray:
    """Refuses NaN, infinities and values the storage type would turn into infinities."""
    largest = float(np.abs(values).max(initial=0.0))  # NaN when any value is NaN
    if not np.isfinite(largest):
        raise CheckpointError(f"{ckpt.directory}: tensor {name!r} holds NaN or infinite values")
    if largest > MAX_MAGNITUDE[dtype]:
        raise CheckpointError(f"{ckpt.directory}: tensor {name!r} holds values up to {largest:g}, more than "
                              f"{dtype.name} can store ({MAX_MAGNITUDE[dtype]:g}); convert with --dtype f32")
    return values


def _check_stored(rows: np.ndarray, ckpt, name: str, dtype: FloatType) -> np.ndarray:
    """Refuses copied rows (a GGUF's own blocks) with a NaN or infinite value or block scale."""
    if dtype in (FloatType.F32, FloatType.F16):
        values = rows.view("<f4" if dtype == FloatType.F32 else "<f2")
    else:  # each block starts with its f16 scale
        values = rows.reshape(-1, dtype.nbytes(32))[:, :2].view("<f2")
    if not np.isfinite(values).all():
        raise CheckpointError(f"{ckpt.directory}: tensor {name!r} holds NaN or infinite values")
    return rows
