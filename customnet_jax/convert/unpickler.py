"""The restricted unpickler: reads a PyTorch zip checkpoint's pickle without running any of its code.

It maps the tensor-rebuild functions and `OrderedDict` to inert stand-ins, turns every other global into an
inert placeholder that is never imported or called, and reads a tensor's bytes from the zip only when that
tensor is asked for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import pathlib
import pickle
import struct
import zipfile
from collections import OrderedDict
from typing import Any

import numpy as np

from customnet_jax.convert.tensors import (
    TORCH_DTYPES,
    TORCH_STORAGE_DTYPES,
    Checkpoint,
    CheckpointFormatError,
    LazyTensor,
    corrupt_error,
)


class ForeignObject:
    """What an unknown global in the pickle becomes: an inert record. Never imported, never called."""

    _global = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> ForeignObject:
        obj = object.__new__(cls)
        object.__setattr__(obj, "args", args)
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> ForeignObject:
        return _foreign_type(f"{self._global}(...)")(*args)

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass

    def add(self, value: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<not loaded: {self._global}>"


_FOREIGN_TYPES: dict[str, type] = {}


def _foreign_type(name: str) -> type:
    if name not in _FOREIGN_TYPES:
        _FOREIGN_TYPES[name] = type(f"Foreign[{name}]", (ForeignObject,), {"_global": name})
    return _FOREIGN_TYPES[name]


def foreign_name(obj: Any) -> str | None:
    """The global an inert placeholder stands for (for an instance or the placeholder class itself)."""
    if isinstance(obj, ForeignObject):
        return obj._global
    if isinstance(obj, type) and issubclass(obj, ForeignObject):
        return obj._global
    return None


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _DType:
    dtype: np.dtype


class _ZipEntries:
    """Byte ranges of the uncompressed records of a PyTorch zip file, read with pread (no mmap, no cache in RSS)."""

    def __init__(self, path: pathlib.Path):
        self.path = path
        self.zip = zipfile.ZipFile(path)
        self.fd = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self.fd).st_size
        pkl = [n for n in self.zip.namelist() if n.endswith("data.pkl")]
        self.prefix = pkl[0][: -len("data.pkl")]
        self._starts: dict[str, int] = {}

    def pickle_bytes(self) -> bytes:
        return self.zip.read(self.prefix + "data.pkl")

    def _start(self, info: zipfile.ZipInfo) -> int:
        if info.filename not in self._starts:
            header = os.pread(self.fd, 30, info.header_offset)
            if len(header) != 30 or header[:4] != b"PK\x03\x04":
                raise CheckpointFormatError(f"{self.path}: bad zip record header for {info.filename} (corrupt file)")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            self._starts[info.filename] = info.header_offset + 30 + name_len + extra_len
        return self._starts[info.filename]

    def read(self, key: str, start: int, nbytes: int) -> bytearray:
        name = f"{self.prefix}data/{key}"
        try:
            info = self.zip.getinfo(name)
        except KeyError as error:
            raise CheckpointFormatError(f"{self.path}: tensor storage {name} is missing (corrupt file)") from error
        if start + nbytes > info.file_size:
            raise CheckpointFormatError(f"{self.path}: storage {name} holds {info.file_size} bytes, a tensor needs "
                                        f"bytes {start}..{start + nbytes} (corrupt file)")
        if info.compress_type != zipfile.ZIP_STORED:  # never written by torch.save; read through zipfile
            return bytearray(self.zip.read(name)[start:start + nbytes])
        offset = self._start(info) + start
        buffer = bytearray(nbytes)
        view, done = memoryview(buffer), 0
        while done < nbytes:
            chunk = os.preadv(self.fd, [view[done:]], offset + done)
            if chunk <= 0:
                raise CheckpointFormatError(f"{self.path} ends inside tensor storage {name} (truncated file)")
            done += chunk
        return buffer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self.zip.close()


@dataclasses.dataclass(frozen=True)
class _LazyStorage:
    entries: _ZipEntries
    key: str
    dtype: np.dtype
    numel: int


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *rest: Any) -> LazyTensor:
    """Stand-in for torch._utils._rebuild_tensor_v2 / v3: a lazy view into the storage's zip record."""
    if not isinstance(storage, _LazyStorage):
        raise pickle.UnpicklingError(f"a tensor is built from {storage!r} instead of a storage record")
    dtype = storage.dtype
    if len(rest) >= 3 and isinstance(rest[2], _DType):  # v3: (requires_grad, hooks, dtype, ...)
        dtype = rest[2].dtype
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if any(s < 0 for s in size) or any(s < 0 for s in stride) or offset < 0:
        raise pickle.UnpicklingError(f"negative tensor geometry {size} / {stride} / {offset}")
    extent = 1 + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) if all(size) else 0
    itemsize = np.dtype(dtype).itemsize
    if (offset + extent) * itemsize > storage.numel * storage.dtype.itemsize:
        raise pickle.UnpicklingError(f"tensor of shape {size} reaches past its storage of {storage.numel} elements")

    def read() -> np.ndarray:
        if extent == 0:
            return np.zeros(size, dtype)
        raw = np.frombuffer(storage.entries.read(storage.key, offset * itemsize, extent * itemsize), dtype=dtype)
        strides = tuple(s * itemsize for s in stride)
        return np.array(np.lib.stride_tricks.as_strided(raw, size, strides), copy=True, order="C")

    return LazyTensor(size, dtype, read)


def _rebuild_parameter(data: Any, requires_grad: Any = None, hooks: Any = None, state: Any = None) -> Any:
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only tensor-rebuild functions, storage types, dtypes and OrderedDict; every other global becomes
    an inert `ForeignObject` placeholder (recorded in `foreign`)."""

    def __init__(self, file: Any, entries: _ZipEntries | None):
        super().__init__(file)
        self.entries = entries
        self.foreign: list[str] = []

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("torch", "torch.storage") and name in TORCH_STORAGE_DTYPES:
            return _StorageType(TORCH_STORAGE_DTYPES[name])
        if module == "torch" and name in TORCH_DTYPES:
            return _DType(np.dtype(TORCH_DTYPES[name]))
        full = f"{module}.{name}"
        if full not in self.foreign:
            self.foreign.append(full)
        return _foreign_type(full)

    def persistent_load(self, pid: Any) -> _LazyStorage:
        if self.entries is None:
            raise pickle.UnpicklingError("a bare pickle refers to external tensor storage")
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str) and isinstance(pid[4], int)):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        return _LazyStorage(self.entries, pid[2], pid[1].dtype, pid[4])


def open_restricted(path: pathlib.Path) -> Checkpoint:
    try:
        entries = _ZipEntries(path)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise corrupt_error(path, error) from error
    try:
        unpickler = _RestrictedUnpickler(io.BytesIO(entries.pickle_bytes()), entries)
        obj = unpickler.load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            zipfile.BadZipFile, OSError) as error:
        entries.close()
        raise corrupt_error(path, error) from error
    except BaseException:
        entries.close()
        raise
    return Checkpoint(path, "zip", "restricted-unpickler", obj, foreign=unpickler.foreign, _closers=[entries.close])


class _Diagnosis(_RestrictedUnpickler):
    """Reads a pickle only to list the globals it names: tensors and storages become None."""

    def find_class(self, module: str, name: str) -> Any:
        found = super().find_class(module, name)
        return (lambda *args, **kwargs: None) if found in (_rebuild_tensor, _rebuild_parameter) else found

    def persistent_load(self, pid: Any) -> None:
        return None


def diagnose_pickle(path: pathlib.Path) -> list[str]:
    """The globals a bare pickle (or a legacy PyTorch file: several pickles in a row) names, found by the
    restricted unpickler (inert; errors ignored)."""
    foreign: list[str] = []
    with open(path, "rb") as f:
        for _ in range(8):  # legacy torch.save: magic number, protocol, system info, the object, storage keys
            unpickler = _Diagnosis(f, None)
            try:
                unpickler.load()
            except Exception:  # noqa: BLE001 - the end of the pickles, or a damaged one: report what was named
                foreign += [n for n in unpickler.foreign if n not in foreign]
                break
            foreign += [n for n in unpickler.foreign if n not in foreign]
    return foreign
