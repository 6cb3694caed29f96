"""Safe, lazy readers for PyTorch (.pt / .ckpt / .bin) and safetensors checkpoints.

Nothing from a checkpoint is ever executed:
  * zip-format PyTorch files are opened with `torch.load(weights_only=True, mmap=True)` (tensors stay on
    disk until read); if that refuses the file (PyTorch-Lightning files carry callback / hparams objects
    outside the allowlist), a restricted unpickler of our own takes over: it maps the tensor-rebuild
    functions and `OrderedDict` to inert stand-ins, turns every other global into an inert placeholder that is
    never imported or called, and reads a tensor's bytes from the zip only when that tensor is asked for;
  * safetensors files are plain JSON + bytes and are read with `safetensors.safe_open`.

Every tensor comes back as a `LazyTensor` (`customnet_jax.convert.tensors`); the restricted unpickler is in
`customnet_jax.convert.unpickler`.
"""

from __future__ import annotations

import ctypes
import mmap
import pathlib
import pickle
import struct
import sys
import warnings
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from customnet_jax.convert.tensors import (
    SAFETENSORS_DTYPES,
    TORCH_DTYPES,
    Checkpoint,
    CheckpointFormatError,
    LazyTensor,
    UnsafeCheckpointError,
    corrupt_error,
    unsafe_message,
)
from customnet_jax.convert.unpickler import diagnose_pickle, open_restricted

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
    from safetensors import safe_open

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
        import torch
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


def _open_torch_zip(path: pathlib.Path) -> Checkpoint:
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        raise corrupt_error(path, error) from error
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
            raise corrupt_error(path, error) from error
        else:
            tree = _map_leaves(obj, lambda t: _torch_leaf(t, mmapped=True), lambda x: isinstance(x, torch.Tensor))
            return Checkpoint(path, "zip", "torch-weights-only", tree)
    return open_restricted(path)


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
        names = diagnose_pickle(path)
        if names:
            raise UnsafeCheckpointError(unsafe_message(path, names)) from error
        raise corrupt_error(path, error) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise corrupt_error(path, error) from error
    tree = _map_leaves(obj, lambda t: _torch_leaf(t, mmapped=False), lambda x: isinstance(x, torch.Tensor))
    return Checkpoint(path, "pickle", "torch-weights-only", tree)
