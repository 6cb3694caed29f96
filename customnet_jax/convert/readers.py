"""Safe, lazy readers for PyTorch (.pt / .ckpt / .bin) and safetensors checkpoints.

Nothing from a checkpoint is ever executed:
  * zip-format PyTorch files are opened with `torch.load(weights_only=True, mmap=True)` (tensors stay on
    disk until read); if that refuses the file (PyTorch-Lightning files carry callback / hparams objects
    outside the allowlist), a restricted unpickler of our own takes over: it maps the tensor-rebuild
    functions and `OrderedDict` to inert stand-ins, turns every other global into an inert placeholder that is
    never imported or called, and reads a tensor's bytes from the zip only when that tensor is asked for;
  * safetensors files are plain JSON + bytes and are read with `safetensors.safe_open`.

Every tensor comes back as a `LazyTensor` (shape and dtype known, data read on demand into a fresh array,
so a converter holds one tensor of the source at a time).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import io
import mmap
import os
import pathlib
import pickle
import struct
import sys
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np
from safetensors import safe_open


class CheckpointFormatError(ValueError):
    """The file is not a checkpoint we can read: wrong kind of file, corrupt, truncated or of unknown layout."""


class UnsafeCheckpointError(CheckpointFormatError):
    """The file's pickle asks for code to be run where weights belong; refused without running anything."""


# ---------------------------------------------------------------------------------------------- lazy tensors

TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.dtype(np.float32), "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32), "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8), "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
    "UntypedStorage": np.dtype(np.uint8),
}
TORCH_DTYPES = {"float32": np.float32, "float": np.float32, "float64": np.float64, "double": np.float64,
                "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16, "int64": np.int64,
                "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16, "int8": np.int8,
                "uint8": np.uint8, "bool": np.bool_}
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                      "BOOL": np.bool_}


class LazyTensor:
    """A tensor whose shape and dtype are known and whose data is read only by `read()` / `np.asarray`."""

    __slots__ = ("shape", "dtype", "_read")

    def __init__(self, shape: tuple[int, ...], dtype: Any, read: Callable[[], np.ndarray]):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self._read = read

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def read(self) -> np.ndarray:
        """The data as a fresh C-contiguous numpy array (never a view of the file)."""
        array = self._read()
        if tuple(array.shape) != self.shape:
            raise CheckpointFormatError(f"tensor data has shape {array.shape}, its header says {self.shape}")
        return array

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        array = self.read()
        return array if dtype is None else array.astype(dtype)

    def __setstate__(self, state: Any) -> None:  # a pickle BUILD on a tensor: ignored, nothing to restore
        del state

    def __repr__(self) -> str:
        return f"LazyTensor(shape={self.shape}, dtype={self.dtype})"


def derived(shape: tuple[int, ...], dtype: Any, read: Callable[[], np.ndarray]) -> LazyTensor:
    """A lazy tensor computed from other lazy tensors (a transpose, a concatenation, a reshape)."""
    return LazyTensor(shape, dtype, read)


# ---------------------------------------------------------------------------------------------- sniffing

def sniff(path: pathlib.Path) -> str:
    """'zip' (PyTorch >= 1.6), 'pickle' (legacy PyTorch or plain pickle), 'safetensors', or 'unknown'."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if len(head) >= 9:
        (length,) = struct.unpack("<Q", head[:8])
        if 2 <= length <= min(path.stat().st_size - 8, 100_000_000) and head[8:9] == b"{":
            return "safetensors"
    if len(head) > 1 and head[0] == 0x80 and 2 <= head[1] <= 5:  # pickle PROTO opcode
        return "pickle"
    return "unknown"


def describe_start(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        return repr(f.read(12))


# ---------------------------------------------------------------------------------------------- opened files

@dataclasses.dataclass
class Checkpoint:
    """An opened checkpoint file: `obj` is its top-level object with `LazyTensor` leaves.

    `reader` says how it was read ('torch-weights-only', 'restricted-unpickler', 'safetensors');
    `foreign` lists globals the pickle named that were not loaded (inert placeholders, e.g. Lightning
    callbacks); `metadata` is the safetensors header metadata.
    """

    path: pathlib.Path
    container: str
    reader: str
    obj: Any
    foreign: list[str] = dataclasses.field(default_factory=list)
    metadata: dict[str, str] = dataclasses.field(default_factory=dict)
    _closers: list[Callable[[], None]] = dataclasses.field(default_factory=list, repr=False)

    def close(self) -> None:
        for close in self._closers:
            close()
        self._closers.clear()
        self.obj = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_checkpoint(path: str | pathlib.Path) -> Checkpoint:
    """Open a PyTorch or safetensors checkpoint safely and lazily (see the module docstring)."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        raise CheckpointFormatError(f"{path} is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointFormatError(f"{path} is empty: not a checkpoint (an interrupted download?)")
    container = sniff(path)
    if container == "safetensors":
        return _open_safetensors(path)
    if container == "zip":
        return _open_torch_zip(path)
    if container == "pickle":
        return _open_torch_legacy(path)
    raise CheckpointFormatError(
        f"{path} is not a checkpoint: it is neither a PyTorch file (zip or pickle) nor a safetensors file "
        f"(it starts with {describe_start(path)})")


# ---------------------------------------------------------------------------------------------- safetensors

def _open_safetensors(path: pathlib.Path) -> Checkpoint:
    try:
        handle = safe_open(str(path), framework="numpy")
        keys = list(handle.keys())
        tensors: dict[str, LazyTensor] = {}
        for key in keys:
            view = handle.get_slice(key)
            dtype = SAFETENSORS_DTYPES.get(view.get_dtype())
            if dtype is None:
                raise CheckpointFormatError(f"{path}: tensor {key} has unsupported dtype {view.get_dtype()}")
            tensors[key] = LazyTensor(tuple(view.get_shape()), dtype,
                                      lambda key=key: np.array(handle.get_tensor(key), copy=True))
        metadata = dict(handle.metadata() or {})
    except CheckpointFormatError:
        raise
    except Exception as error:  # safetensors raises its own SafetensorError for bad headers / sizes
        raise CheckpointFormatError(f"{path} is a corrupt or truncated safetensors file: {error}") from error
    return Checkpoint(path, "safetensors", "safetensors", tensors, metadata=metadata,
                      _closers=[lambda: handle.__exit__(None, None, None)])


# ---------------------------------------------------------------------------------------------- torch, trusted path

def _torch():
    try:
        import torch  # optional dependency: only .pt / .ckpt files that need torch's unpickler
    except ImportError:
        return None
    return torch


def _release_pages(address: int, nbytes: int) -> None:
    """Drop the resident pages of a read-only private file mapping (re-read from the file if touched again),
    so that reading a memory-mapped checkpoint tensor by tensor does not accumulate the whole file in RSS."""
    if sys.platform != "linux" or nbytes <= 0:
        return
    page = mmap.PAGESIZE
    start = address - address % page
    length = address + nbytes - start
    libc = ctypes.CDLL(None, use_errno=True)
    libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(length), 4)  # MADV_DONTNEED


def _torch_leaf(tensor: Any, mmapped: bool) -> LazyTensor:
    torch = _torch()
    name = str(tensor.dtype).removeprefix("torch.")
    if name not in TORCH_DTYPES:
        raise CheckpointFormatError(f"tensor of unsupported dtype {tensor.dtype}")
    dtype = TORCH_DTYPES[name]

    def read() -> np.ndarray:
        t = tensor.detach()
        if t.dtype == torch.bfloat16:
            array = t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
        else:
            array = t.numpy()
        out = np.array(array, copy=True, order="C")
        if mmapped:
            storage = t.untyped_storage()
            _release_pages(storage.data_ptr(), storage.nbytes())
        return out

    return LazyTensor(tuple(tensor.shape), dtype, read)


def _map_leaves(obj: Any, leaf: Callable[[Any], Any], is_leaf: Callable[[Any], bool]) -> Any:
    if is_leaf(obj):
        return leaf(obj)
    if isinstance(obj, Mapping):
        return {k: _map_leaves(v, leaf, is_leaf) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_leaves(v, leaf, is_leaf) for v in obj]
    return obj


def _corrupt(path: pathlib.Path, error: BaseException) -> CheckpointFormatError:
    return CheckpointFormatError(f"{path} is a corrupt or truncated checkpoint ({type(error).__name__}: {error}); "
                                 "download or copy it again")


def _open_torch_zip(path: pathlib.Path) -> Checkpoint:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise _corrupt(path, error) from error
    if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
        raise CheckpointFormatError(f"{path} is a zip file but not a PyTorch checkpoint (no data.pkl inside; "
                                    f"it holds {names[:5]})")
    torch = _torch()
    if torch is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except pickle.UnpicklingError:
            pass  # not allowlisted (Lightning callbacks, hparams...) or hostile: the restricted reader decides
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as error:
            raise _corrupt(path, error) from error
        else:
            tree = _map_leaves(obj, lambda t: _torch_leaf(t, mmapped=True), lambda x: isinstance(x, torch.Tensor))
            return Checkpoint(path, "zip", "torch-weights-only", tree)
    return _open_restricted(path)


def _open_torch_legacy(path: pathlib.Path) -> Checkpoint:
    """A pre-1.6 PyTorch file or a bare pickle: only `torch.load(weights_only=True)` may read it."""
    torch = _torch()
    if torch is None:
        raise CheckpointFormatError(f"{path} is a legacy (non-zip) pickle; reading it needs PyTorch installed")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": we refuse or read it anyway
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        names = _diagnose_pickle(path)
        if names:
            raise UnsafeCheckpointError(unsafe_message(path, names)) from error
        raise _corrupt(path, error) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise _corrupt(path, error) from error
    tree = _map_leaves(obj, lambda t: _torch_leaf(t, mmapped=False), lambda x: isinstance(x, torch.Tensor))
    return Checkpoint(path, "pickle", "torch-weights-only", tree)


def unsafe_message(path: pathlib.Path, names: list[str], where: str = "") -> str:
    """The refusal message for a pickle that asks for code where weights belong."""
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"refused {path}: {where or 'its pickle'} would import and call {listed} when loaded by an unsafe "
            "reader (torch.load without weights_only). That is code, not weights; nothing from the file was "
            "executed. If this should be a checkpoint, get it again from a trusted source.")


def _diagnose_pickle(path: pathlib.Path) -> list[str]:
    """The globals a bare pickle names, found by the restricted unpickler (inert; errors ignored)."""
    with open(path, "rb") as f:
        unpickler = _RestrictedUnpickler(f, None)
        with contextlib.suppress(Exception):
            unpickler.load()
    return unpickler.foreign


# ---------------------------------------------------------------------------------------------- restricted reader

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


def _open_restricted(path: pathlib.Path) -> Checkpoint:
    try:
        entries = _ZipEntries(path)
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise _corrupt(path, error) from error
    try:
        unpickler = _RestrictedUnpickler(io.BytesIO(entries.pickle_bytes()), entries)
        obj = unpickler.load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            zipfile.BadZipFile, OSError) as error:
        entries.close()
        raise _corrupt(path, error) from error
    except BaseException:
        entries.close()
        raise
    return Checkpoint(path, "zip", "restricted-unpickler", obj, foreign=unpickler.foreign, _closers=[entries.close])


# ---------------------------------------------------------------------------------------------- helpers

def iter_tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, LazyTensor]]:
    """(dotted path, tensor) for every LazyTensor in a nested dict / list structure."""
    if isinstance(obj, LazyTensor):
        yield prefix.rstrip("."), obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from iter_tensors(v, f"{prefix}{k}.")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from iter_tensors(v, f"{prefix}{i}.")
