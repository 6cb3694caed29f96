"""Streaming writers: safetensors and PyTorch zip checkpoints written one tensor at a time.

Both formats put a small header (JSON / a pickle of the structure) before the data, and the header only
needs names, shapes and dtypes: we write it first and then stream each tensor as it is produced, so an
export never holds more than one tensor beyond the model itself. The PyTorch file is what `torch.save`
writes (protocol-2 `data.pkl` with `_rebuild_tensor_v2` + one 64-byte-aligned record per storage) and loads
with `torch.load(weights_only=True, mmap=True)`.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import ml_dtypes
import numpy as np

SAFETENSORS_NAMES = {np.dtype(np.float64): "F64", np.dtype(np.float32): "F32", np.dtype(np.float16): "F16",
                     np.dtype(ml_dtypes.bfloat16): "BF16", np.dtype(np.int64): "I64", np.dtype(np.int32): "I32",
                     np.dtype(np.int16): "I16", np.dtype(np.int8): "I8", np.dtype(np.uint8): "U8",
                     np.dtype(np.bool_): "BOOL"}
TORCH_STORAGES = {np.dtype(np.float64): "DoubleStorage", np.dtype(np.float32): "FloatStorage",
                  np.dtype(np.float16): "HalfStorage", np.dtype(ml_dtypes.bfloat16): "BFloat16Storage",
                  np.dtype(np.int64): "LongStorage", np.dtype(np.int32): "IntStorage",
                  np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage",
                  np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage"}

Item = tuple[str, tuple[int, ...], Any]  # (name, shape, numpy dtype)


def _nbytes(shape: Sequence[int], dtype: Any) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


class _Sequential:
    """Checks that arrays arrive in the announced order with the announced shape and dtype."""

    def __init__(self, items: Sequence[Item]):
        self.items = [(name, tuple(int(s) for s in shape), np.dtype(dtype)) for name, shape, dtype in items]
        self.index = 0

    def next(self, array: np.ndarray) -> tuple[str, np.ndarray]:
        if self.index >= len(self.items):
            raise ValueError("more tensors written than announced")
        name, shape, dtype = self.items[self.index]
        self.index += 1
        array = np.asarray(array, order="C")  # (ascontiguousarray would turn a 0-d scalar into shape (1,))
        if tuple(array.shape) != shape or array.dtype != dtype:
            raise ValueError(f"{name}: writing {array.shape} {array.dtype}, announced {shape} {dtype}")
        return name, array

    def check_complete(self) -> None:
        if self.index != len(self.items):
            raise ValueError(f"{len(self.items) - self.index} announced tensors were not written")


class SafetensorsWriter:
    """`write(array)` the tensors of `items` in order; the header (with `metadata`) is written up front."""

    def __init__(self, path: str | pathlib.Path, items: Sequence[Item], metadata: dict[str, str] | None = None):
        self.order = _Sequential(items)
        header: dict[str, Any] = {"__metadata__": dict(metadata or {})}
        offset = 0
        for name, shape, dtype in self.order.items:
            if dtype not in SAFETENSORS_NAMES:
                raise ValueError(f"{name}: dtype {dtype} cannot be stored in safetensors")
            size = _nbytes(shape, dtype)
            header[name] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": list(shape),
                            "data_offsets": [offset, offset + size]}
            offset += size
        encoded = json.dumps(header, separators=(",", ":")).encode()
        encoded += b" " * (-len(encoded) % 8)
        self.path = pathlib.Path(path)
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.file = open(self.partial, "wb")  # noqa: SIM115 (closed in close() / abort())
        self.file.write(struct.pack("<Q", len(encoded)) + encoded)

    def write(self, array: np.ndarray) -> None:
        _, array = self.order.next(array)
        self.file.write(memoryview(array.reshape(-1).view(np.uint8)))

    def close(self) -> None:
        self.order.check_complete()
        self.file.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        self.file.close()
        self.partial.unlink(missing_ok=True)


class _Storage:
    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """Pickles as torch.save pickles a contiguous CPU tensor."""

    def __init__(self, storage: _Storage, shape: tuple[int, ...]):
        self.storage, self.shape = storage, shape

    def __reduce__(self) -> tuple:
        import torch._utils  # optional dependency: only when a torch .pt file is loaded back

        stride, step = [], 1
        for size in reversed(self.shape):
            stride.append(step)
            step *= max(size, 1)
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, 0, tuple(self.shape), tuple(reversed(stride)), False, OrderedDict()))


class _Pickler(pickle.Pickler):
    def persistent_id(self, obj: Any) -> Any:
        if isinstance(obj, _Storage):
            import torch  # optional dependency: only when a torch .pt file is loaded back

            return ("storage", getattr(torch, TORCH_STORAGES[obj.dtype]), obj.key, "cpu", obj.numel)
        return None


class TorchZipWriter:
    """A PyTorch zip checkpoint whose top-level object is `wrap(state_dict)` (default: the OrderedDict itself);
    `write(array)` the tensors of `items` in order."""

    def __init__(self, path: str | pathlib.Path, items: Sequence[Item], wrap: Any = None):
        self.order = _Sequential(items)
        path = pathlib.Path(path)
        self.archive = path.stem or "archive"
        state: OrderedDict[str, _Tensor] = OrderedDict()
        for index, (name, shape, dtype) in enumerate(self.order.items):
            if dtype not in TORCH_STORAGES:
                raise ValueError(f"{name}: dtype {dtype} has no torch storage type")
            state[name] = _Tensor(_Storage(str(index), dtype, int(np.prod(shape, dtype=np.int64))), shape)
        buffer = io.BytesIO()
        _Pickler(buffer, protocol=2).dump(state if wrap is None else wrap(state))
        self.path, self.partial = path, path.with_name(path.name + ".partial")
        self.zip = zipfile.ZipFile(self.partial, "w", compression=zipfile.ZIP_STORED, allowZip64=True)
        self._record("data.pkl", buffer.getvalue())
        self._record(".format_version", b"1")
        self._record(".storage_alignment", b"64")
        self._record("byteorder", b"little")

    def _info(self, name: str, size: int) -> zipfile.ZipInfo:
        info = zipfile.ZipInfo(f"{self.archive}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type = zipfile.ZIP_STORED
        info.file_size = size
        start = self.zip.start_dir + 30 + len(info.filename.encode()) + 4  # local header + our extra field header
        pad = -start % 64  # data aligned to 64 bytes, as torch.save does (needed for mmap loading)
        info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
        return info

    def _record(self, name: str, data: bytes) -> None:
        with self.zip.open(self._info(name, len(data)), "w") as f:
            f.write(data)

    def write(self, array: np.ndarray) -> None:
        _, array = self.order.next(array)
        self._record(f"data/{self.order.index - 1}", memoryview(array.reshape(-1).view(np.uint8)))

    def close(self) -> None:
        self.order.check_complete()
        self._record("version", b"3\n")
        self._record(".data/serialization_id", os.urandom(20).hex().encode()[:40])
        self.zip.close()
        self.partial.replace(self.path)

    def abort(self) -> None:
        self.zip.close()
        self.partial.unlink(missing_ok=True)
