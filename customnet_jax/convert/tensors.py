"""The types every checkpoint reader returns: lazy tensors, opened checkpoints, and the reader errors.

A `LazyTensor` knows its shape and dtype and reads its data on demand into a fresh array, so a converter
holds one tensor of the source at a time.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np


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


def corrupt_error(path: pathlib.Path, error: BaseException) -> CheckpointFormatError:
    detail = f"{type(error).__name__}: {error}"
    if "weights_only" in detail:  # torch's refusal text, with advice to load unsafely that we never pass on
        detail = "its pickle holds objects other than tensors and plain containers"
    return CheckpointFormatError(f"{path} is a corrupt or truncated checkpoint ({detail}); download or copy it again")


def unsafe_message(path: pathlib.Path, names: list[str], where: str = "") -> str:
    """The refusal message for a pickle that asks for code where weights belong."""
    listed = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (f"refused {path}: the file asks to run code ({where or 'its pickle'} would import and call {listed}) and "
            "will not be loaded; nothing from the file was executed. A checkpoint holds weights, not code: if this "
            "should be one, get it again from a trusted source.")


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
