"""Reads tensors from HF safetensors checkpoints one at a time.

Only the rows asked for are read (with pread, not a memory map, so that resident memory stays at
one chunk however large the shard), so converting a model needs about one tensor of memory, not the
whole checkpoint. bf16 is widened to float32 with integer shifts (numpy has no bfloat16); FP8 (E4M3)
weights are decoded by a table of their 256 values and multiplied by their blocks' `weight_scale_inv`,
as the official FP8 releases store them (quantization_config.quant_method "fp8").
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from .json_files import read_json_object

# The dtypes we convert from, as numpy reads their bytes.
_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "F8_E4M3": np.uint8}
# Bytes per element of every safetensors dtype: a header may list tensors we never read.
_ITEM_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
MAX_HEADER_BYTES = 100 << 20  # the safetensors library's own limit
SCALE_SUFFIX = "_scale_inv"  # FP8 checkpoints: "x.weight" has its block scales in "x.weight_scale_inv"


def _e4m3_values() -> np.ndarray:
    """The float32 value of each FP8 E4M3 ("fn": no infinities) byte: sign, 4 exponent bits (bias 7),
    3 mantissa bits; exponent 0 is subnormal; 0x7f and 0xff are NaN."""
    b = np.arange(256)
    exponent, mantissa = (b >> 3) & 15, (b & 7).astype(np.float64)
    magnitude = np.where(exponent == 0, mantissa / 8 * 2.0 ** -6, (1 + mantissa / 8) * 2.0 ** (exponent - 7))
    magnitude[(b & 0x7F) == 0x7F] = np.nan
    return np.where(b & 0x80, -magnitude, magnitude).astype(np.float32)


_E4M3 = _e4m3_values()


class CheckpointError(ValueError):
    """A checkpoint that cannot be read; the message names the file or tensor."""


class _File:
    def __init__(self, path: Path):
        self.path = path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{path}: not a safetensors file ({len(head)} bytes)")
                (n,) = struct.unpack("<Q", head)
                if n > min(size - 8, MAX_HEADER_BYTES):
                    raise CheckpointError(f"{path}: corrupt safetensors header length {n} (the file has {size} bytes)")
                header = json.loads(f.read(n))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt safetensors header: {e}") from None
        except OSError as e:
            raise CheckpointError(f"{path}: cannot read: {e.strerror}") from None
        self.data_start = 8 + n
        self.header = _checked_header(path, header, size - self.data_start)
        self._fd = os.open(path, os.O_RDONLY)

    def read(self, name: str, row_begin: int = 0, row_end: int | None = None) -> np.ndarray:
        """Rows [row_begin, row_end) of the tensor (all of it by default) as float32."""
        meta = self.header[name]
        dtype, shape = meta["dtype"], meta["shape"]
        if dtype not in _DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has dtype {dtype}, which cannot be converted "
                                  f"(only {', '.join(_DTYPES)})")
        itemsize = np.dtype(_DTYPES[dtype]).itemsize
        row_len = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        n_rows = shape[0] if shape else 1
        row_end = n_rows if row_end is None else row_end
        begin = meta["data_offsets"][0]
        n_bytes = (row_end - row_begin) * row_len * itemsize
        data = os.pread(self._fd, n_bytes, self.data_start + begin + row_begin * row_len * itemsize)
        if len(data) != n_bytes:
            raise CheckpointError(f"{self.path}: short read in tensor {name}")
        raw = np.frombuffer(data, dtype=_DTYPES[dtype])
        if dtype == "BF16":
            values = (raw.astype(np.uint32) << 16).view(np.float32)
        elif dtype == "F8_E4M3":
            values = _E4M3[raw]
        else:
            values = raw.astype(np.float32)
        return values.reshape([row_end - row_begin, *shape[1:]] if shape else [])

    def close(self):
        os.close(self._fd)


def _checked_header(path: Path, header, data_bytes: int) -> dict:
    """A safetensors header with every entry checked: known dtype, a shape of non-negative ints, data
    inside the data section whose size is shape x dtype, no two tensors sharing bytes."""
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt safetensors header: not a JSON object")
    header = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = []
    for name, meta in header.items():
        def bad(why: str):
            raise CheckpointError(f"{path}: tensor {name!r}: {why}")

        if not isinstance(meta, dict) or not {"dtype", "shape", "data_offsets"} <= meta.keys():
            bad(f"entry {meta!r} lacks dtype, shape or data_offsets")
        dtype, shape, offsets = meta["dtype"], meta["shape"], meta["data_offsets"]
        if dtype not in _ITEM_SIZES:
            bad(f"unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            bad(f"shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)
                and 0 <= offsets[0] <= offsets[1] <= data_bytes):
            bad(f"data_offsets {offsets!r} are not inside the {data_bytes} bytes of data")
        n_bytes = math.prod(shape) * _ITEM_SIZES[dtype]
        if offsets[1] - offsets[0] != n_bytes:
            bad(f"data_offsets {offsets} hold {offsets[1] - offsets[0]} bytes, but shape {shape} of {dtype} "
                f"needs {n_bytes}")
        if n_bytes:
            spans.append((offsets[0], offsets[1], name))
    spans.sort()
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise CheckpointError(f"{path}: tensors {first!r} and {second!r} share data bytes")
    return header


class Checkpoint:
    """All tensors of an HF checkpoint directory (single file, or shards with an index), or of the
    given shard files only. weight_block_size: FP8 scale blocks [rows, cols] (default: inferred from
    the shapes of weight and scales)."""

    def __init__(self, directory: str | Path, files: list[str] | None = None,
                 weight_block_size: tuple[int, int] | None = None):
        self.directory = Path(directory)
        self.weight_block_size = weight_block_size
        index = self.directory / "model.safetensors.index.json"
        if files is not None:
            shard_names, weight_map = files, None
        elif index.exists():
            weight_map = read_weight_map(index)
            shard_names = sorted(set(weight_map.values()))
        else:
            shard_names = sorted(p.name for p in self.directory.glob("*.safetensors"))
            if not shard_names:
                raise CheckpointError(f"{self.directory}: no *.safetensors files")
            weight_map = None
        self._files = {}
        self._where: dict[str, _File] = {}
        try:
            for name in shard_names:
                self._files[name] = _File(self.directory / name)
            for f in self._files.values():
                for tensor in f.header:
                    self._where[tensor] = f
            missing = [t for t in weight_map or () if t not in self._where]
            if missing:
                raise CheckpointError(f"{index}: lists {missing[0]!r} but no shard holds it")
        except BaseException:
            self.close()
            raise

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def names(self) -> list[str]:
        return list(self._where)

    def unused(self, used_names) -> list[str]:
        """The checkpoint's tensors not among `used_names` (nor their FP8 scales)."""
        used = set(used_names)
        used |= {n + SCALE_SUFFIX for n in used}
        return sorted(n for n in self._where if n not in used)

    def stored_type(self, name: str):
        """Safetensors tensors are always re-encoded (see GGUFCheckpoint.stored_type)."""
        return None

    def n_values(self) -> int:
        """Values in all tensors together."""
        return sum(math.prod(meta["shape"]) for f in self._files.values() for meta in f.header.values())

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._where[name].header[name]["shape"])

    def read(self, name: str, row_begin: int = 0, row_end: int | None = None) -> np.ndarray:
        """Rows [row_begin, row_end) of a tensor (all of it by default) as float32."""
        if name not in self._where:
            raise CheckpointError(f"{self.directory}: missing tensor {name!r}")
        values = self._where[name].read(name, row_begin, row_end)
        if self._where[name].header[name]["dtype"] == "F8_E4M3":
            values = self._fp8_scaled(name, values, row_begin)
        return values

    def _fp8_scaled(self, name: str, values: np.ndarray, row_begin: int) -> np.ndarray:
        """FP8 weights times the inverse scale of the [block rows x block cols] block each value is in."""
        scale_name = name + SCALE_SUFFIX
        if scale_name not in self._where:
            raise CheckpointError(f"{self.directory}: FP8 tensor {name!r} has no {scale_name!r}")
        rows, cols = self.shape(name) if len(self.shape(name)) == 2 else (1, self.shape(name)[0])
        scales = self._where[scale_name].read(scale_name).reshape(-1, self.shape(scale_name)[-1] if self.shape(scale_name) else 1)
        block_rows, block_cols = self.weight_block_size or (-(-rows // scales.shape[0]), -(-cols // scales.shape[1]))
        if scales.shape != (-(-rows // block_rows), -(-cols // block_cols)):
            raise CheckpointError(f"{self.directory}: {scale_name!r} has shape {list(scales.shape)}, not one scale per "
                                  f"{block_rows}x{block_cols} block of {name!r} {[rows, cols]}")
        values = values.reshape(-1, cols)
        row_blocks = (np.arange(row_begin, row_begin + values.shape[0]) // block_rows)
        per_value = np.repeat(scales[row_blocks], block_cols, axis=1)[:, :cols]
        return (values * per_value).astype(np.float32).reshape(values.shape if len(self.shape(name)) == 2 else -1)

    def close(self):
        for f in self._files.values():
            f.close()
        self._files = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_weight_map(index: Path, shards_present: bool = True) -> dict[str, str]:
    """The index's tensor -> shard map; shards must be file names in the checkpoint directory itself (and,
    with `shards_present`, exist there; a pull fetches them one at a time)."""
    weight_map = read_json_object(index, CheckpointError).get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CheckpointError(f"{index}: weight_map is not an object of tensor -> shard file names")
    for shard in set(weight_map.values()):
        if Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{index}: shard {shard!r} is not a file name in the checkpoint directory")
        if shards_present and not (index.parent / shard).is_file():
            raise CheckpointError(f"{index}: shard {shard!r} does not exist")
    return weight_map
