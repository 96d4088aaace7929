"""Reads tensors from HF safetensors checkpoints one at a time.

Only the rows asked for are read (with pread, not a memory map, so that resident memory stays at
one chunk however large the shard), so converting a model needs about one tensor of memory, not the
whole checkpoint. bf16 is widened to float32 with integer shifts (numpy has no bfloat16); FP8 (E4M3)
weights are decoded by a table of their 256 values and multiplied by their blocks' `weight_scale_inv`,
as the official FP8 releases store them (quantization_config.quant_method "fp8").
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64, "F8_E4M3": np.uint8}
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
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: not a safetensors file")
            (n,) = struct.unpack("<Q", head)
            try:
                self.header = json.loads(f.read(n))
            except (json.JSONDecodeError, UnicodeDecodeError, MemoryError, OverflowError):
                raise CheckpointError(f"{path}: corrupt safetensors header") from None
            self.data_start = 8 + n
        self.header.pop("__metadata__", None)
        self._fd = os.open(path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size

    def read(self, name: str, row_begin: int = 0, row_end: int | None = None) -> np.ndarray:
        """Rows [row_begin, row_end) of the tensor (all of it by default) as float32."""
        meta = self.header[name]
        dtype, shape = meta["dtype"], meta["shape"]
        if dtype not in _DTYPES:
            raise CheckpointError(f"{self.path}: tensor {name} has unsupported dtype {dtype}")
        itemsize = np.dtype(_DTYPES[dtype]).itemsize
        row_len = int(np.prod(shape[1:])) if len(shape) > 1 else 1
        n_rows = shape[0] if shape else 1
        row_end = n_rows if row_end is None else row_end
        begin, end = meta["data_offsets"]
        if end - begin != n_rows * row_len * itemsize or self.data_start + end > self._size:
            raise CheckpointError(f"{self.path}: tensor {name} data is truncated or inconsistent with its shape")
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
            weight_map = json.loads(index.read_text())["weight_map"]
            shard_names = sorted(set(weight_map.values()))
        else:
            shard_names = sorted(p.name for p in self.directory.glob("*.safetensors"))
            if not shard_names:
                raise CheckpointError(f"{self.directory}: no *.safetensors files")
            weight_map = None
        self._files = {name: _File(self.directory / name) for name in shard_names}
        self._where: dict[str, _File] = {}
        for f in self._files.values():
            for tensor in f.header:
                self._where[tensor] = f
        if weight_map:
            missing = [t for t in weight_map if t not in self._where]
            if missing:
                raise CheckpointError(f"{index}: lists {missing[0]!r} but no shard holds it")

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

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
