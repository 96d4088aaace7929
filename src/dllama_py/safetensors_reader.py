"""Reads tensors from HF safetensors checkpoints one at a time.

Only the rows asked for are read (with pread, not a memory map, so that resident memory stays at
one chunk however large the shard), so converting a model needs about one tensor of memory, not the
whole checkpoint. bf16 is widened to float32 with integer shifts (numpy has no bfloat16).
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np

_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": np.uint16, "F64": np.float64}


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
        else:
            values = raw.astype(np.float32)
        return values.reshape([row_end - row_begin, *shape[1:]] if shape else [])

    def close(self):
        os.close(self._fd)


class Checkpoint:
    """All tensors of an HF checkpoint directory (single file, or shards with an index)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        index = self.directory / "model.safetensors.index.json"
        if index.exists():
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
        """The checkpoint's tensors not among `used_names`."""
        used = set(used_names)
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
        return self._where[name].read(name, row_begin, row_end)

    def close(self):
        for f in self._files.values():
            f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
