"""A built dataset's records read so that a damaged one is named: its index, split, dataset and file.

tfds' array_record data source decodes a record when it is read; a damaged file (a bad disk, a copy cut short)
fails there with an error that names neither. `NamedRecords` wraps the source and turns any read error into a
`DamagedRecordError` that says which record of which file, so the file can be rebuilt or removed.
"""

from __future__ import annotations

import bisect
import pathlib
from collections.abc import Sequence
from typing import Any


class DamagedRecordError(RuntimeError):
    """A record of a built dataset cannot be read."""


def _shards(info: Any, split: str) -> list[tuple[str, int]]:
    """(file name, records) of each shard of `split`, in reading order ([] if tfds does not tell)."""
    try:
        return [(pathlib.Path(str(f.filename)).name, int(f.take if f.take >= 0 else f.examples_in_shard))
                for f in info.splits[split].file_instructions]
    except Exception:  # noqa: BLE001 - only used to name the file in an error
        return []


class NamedRecords:
    """A random-access data source (len, [i], __getitems__) whose read errors name the record and its file."""

    def __init__(self, source: Any, folder: pathlib.Path, split: str, info: Any = None):
        self.source, self.folder, self.split = source, pathlib.Path(folder), split
        shards = _shards(info, split) if info is not None else []
        self.names = [name for name, _ in shards]
        self.ends = []
        total = 0
        for _, count in shards:
            total += count
            self.ends.append(total)

    def __len__(self) -> int:
        return len(self.source)

    def file_of(self, index: int) -> str:
        position = bisect.bisect_right(self.ends, index)
        return str(self.folder / self.names[position]) if position < len(self.names) else f"a file of {self.folder}"

    def _error(self, index: int, error: BaseException) -> DamagedRecordError:
        text = str(error).strip().splitlines()[0] if str(error).strip() else ""
        return DamagedRecordError(f"record {index} of the {self.split!r} split cannot be read from "
                                  f"{self.file_of(index)} ({type(error).__name__}: {text[:200]}): the file is "
                                  "damaged; build the dataset again (or restore the file)")

    def __getitem__(self, index: int) -> Any:
        try:
            return self.source[index]
        except Exception as error:  # noqa: BLE001 - any read / decode failure of a stored record
            raise self._error(index, error) from None

    def __getitems__(self, indices: Sequence[int]) -> list[Any]:
        try:
            return list(self.source.__getitems__(indices))
        except Exception:  # noqa: BLE001 - find the record that fails, one by one
            return [self[i] for i in indices]

    def __repr__(self) -> str:
        return f"NamedRecords({self.folder}, {self.split!r}, {len(self)} records)"
