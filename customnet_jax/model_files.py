"""The files of a model folder on disk: checksums, atomic replacement, leftovers of a killed writer, finite weights.

A folder is written under a staging name beside its destination (`.<name>.partial-<random>`, holding an
`.owner` file with the writer's pid) and then published: swapped with the old folder in one atomic rename
(Linux renameat2 RENAME_EXCHANGE; elsewhere two renames), the old one removed afterwards. `--overwrite`
replaces only a model folder (config.json + params/ and nothing but a model folder's files): a folder with
anything else in it is refused, never deleted. The staging folders of a writer that was killed are removed by
the next write beside them. `checksums.json` records the sha256 of every parameter file at save time; loading
verifies them (older folders without it load unverified).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

CHECKSUMS = "checksums.json"
MODEL_ENTRIES = {"config.json", "params", "tokenizer", "provenance.json", CHECKSUMS, "extra_tensors.safetensors"}
STAGING_KINDS = ("partial", "old", "converting")  # converting: older versions' staging
OWNER = ".owner"


class ModelFileError(ValueError):
    """A model folder's files are damaged (checksum mismatch, missing file, non-finite weights)."""


class NotReplaceableError(FileExistsError):
    """--overwrite was asked for a path that is not a model folder."""


# ---------------------------------------------------------------------------------------------- checksums

def _sha256(path: pathlib.Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _checksummed_files(folder: pathlib.Path) -> list[pathlib.Path]:
    files = sorted(p for p in (folder / "params").rglob("*") if p.is_file())
    extra = folder / "extra_tensors.safetensors"
    return files + ([extra] if extra.is_file() else [])


def _hash_all(folder: pathlib.Path, files: list[pathlib.Path]) -> dict[str, str]:
    """sha256 per file, several files at once (hashlib releases the GIL): close to disk speed."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        digests = pool.map(_sha256, files)
        return {str(p.relative_to(folder)): d for p, d in zip(files, digests, strict=True)}


def write_checksums(folder: pathlib.Path) -> None:
    """Record the sha256 of every parameter file of `folder` in checksums.json."""
    sums = _hash_all(folder, _checksummed_files(folder))
    (folder / CHECKSUMS).write_text(json.dumps({"sha256": sums}, indent=1, sort_keys=True))


def verify_checksums(folder: pathlib.Path) -> bool:
    """Check every file recorded in checksums.json; False when the folder has none (written before them)."""
    record = folder / CHECKSUMS
    if not record.is_file():
        return False
    try:
        expected = json.loads(record.read_text())["sha256"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ModelFileError(f"{record} is damaged ({error}): the folder cannot be verified; convert or export the "
                             "model again") from error
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise ModelFileError(f"{folder} is damaged: {folder / missing[0]} is missing"
                             + (f" (and {len(missing) - 1} more files)" if len(missing) > 1 else "")
                             + "; convert or export the model again")
    actual = _hash_all(folder, [folder / name for name in expected])
    changed = [name for name in expected if actual[name] != expected[name]]
    if changed:
        raise ModelFileError(f"{folder} is damaged: {folder / changed[0]} does not match the checksum recorded when "
                             f"it was saved" + (f" (and {len(changed) - 1} more files)" if len(changed) > 1 else "")
                             + "; convert or export the model again")
    return True


# ---------------------------------------------------------------------------------------------- finite weights

def _name(keypath: Any) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keypath)


def nonfinite_tensors(tree: Any) -> list[str]:
    """The names ('unet/conv_in/kernel') of the floating-point leaves of `tree` that hold NaN or inf."""
    leaves = [(kp, x) for kp, x in jax.tree_util.tree_leaves_with_path(tree)
              if jnp.issubdtype(getattr(x, "dtype", np.asarray(x).dtype), jnp.floating)]
    on_host = [not isinstance(x, jax.Array) or all(d.platform == "cpu" for d in x.devices()) for _, x in leaves]
    flags = [bool(np.all(np.isfinite(np.asarray(x)))) if host else None for (_, x), host in zip(leaves, on_host,
                                                                                                 strict=True)]
    accelerated = [x for (_, x), host in zip(leaves, on_host, strict=True) if not host]
    if accelerated:  # one program for all, on the device (host numpy would copy every weight over)
        results = iter(jax.device_get(_all_finite(accelerated)))
        flags = [next(results) if flag is None else flag for flag in flags]
    return [_name(kp) for (kp, _), ok in zip(leaves, flags, strict=True) if not ok]


@jax.jit
def _all_finite(arrays: list) -> list:
    return [jnp.all(jnp.isfinite(x)) for x in arrays]


def check_finite(tree: Any, where: str) -> None:
    """Refuse NaN / inf weights, naming the first tensor that holds them."""
    bad = nonfinite_tensors(tree)
    if bad:
        more = f" (and {len(bad) - 1} more tensors)" if len(bad) > 1 else ""
        raise ModelFileError(f"{where}: tensor {bad[0]} holds NaN or inf values{more}; such weights make black or "
                             "noise pictures: use a checkpoint from before the training diverged")


# ---------------------------------------------------------------------------------------------- staging, replacing

def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(path: pathlib.Path, log: Any = None) -> list[pathlib.Path]:
    """Remove the staging folders beside `path` whose writer is gone (killed during a write)."""
    removed = []
    if not path.parent.is_dir():
        return removed
    for kind in STAGING_KINDS:
        for leftover in path.parent.glob(f".{path.name}.{kind}-*"):
            owner = leftover / OWNER
            try:
                pid = int(owner.read_text())
            except (OSError, ValueError):
                pid = None
            if pid is not None and pid != os.getpid() and _alive(pid):
                continue  # another writer is still at work
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    if removed and log is not None:
        log(f"removed {len(removed)} leftover staging folder(s) of an interrupted write beside {path}")
    return removed


def staging_folder(path: pathlib.Path, kind: str = "partial") -> pathlib.Path:
    """A new empty folder beside `path`, marked with this process's pid (see `clean_leftovers`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = pathlib.Path(tempfile.mkdtemp(prefix=f".{path.name}.{kind}-", dir=path.parent))
    (folder / OWNER).write_text(str(os.getpid()))
    return folder


def check_replaceable(path: pathlib.Path, overwrite: bool) -> None:
    """Refuse to write over anything but a model folder (and over that without `overwrite`)."""
    if not path.exists() and not path.is_symlink():
        return
    if not overwrite:
        raise FileExistsError(f"{path} exists; choose another output folder or pass --overwrite")
    if path.is_symlink() or not path.is_dir():
        raise NotReplaceableError(f"--overwrite refused: {path} is not a model folder (it is a file or a link); "
                                  "nothing was changed")
    entries = {p.name for p in path.iterdir()}
    foreign = sorted(entries - MODEL_ENTRIES)
    if not {"config.json", "params"} <= entries or foreign:
        what = f"it holds {foreign[:5]}" if foreign else "it lacks config.json or params/"
        raise NotReplaceableError(f"--overwrite refused: {path} is not a model folder ({what}); nothing was "
                                  "deleted: choose another output folder or move it away")


_RENAME_EXCHANGE = 2


def _exchange(a: pathlib.Path, b: pathlib.Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return result == 0


def publish(staging: pathlib.Path, path: pathlib.Path, overwrite: bool) -> None:
    """Make the complete folder `staging` be `path`: a plain rename, or an atomic swap with the old model
    folder (then removed). At every instant `path` is either the old folder or the new one."""
    with contextlib.suppress(FileNotFoundError):
        (staging / OWNER).unlink()
    check_replaceable(path, overwrite)
    if not path.exists():
        staging.rename(path)
        return
    if _exchange(staging, path):
        old = staging
    else:  # two renames: a kill in between leaves the old folder under .<name>.old-*, cleaned next time
        old = staging_folder(path, "old")
        os.replace(path, old / "folder")
        staging.rename(path)
    shutil.rmtree(old, ignore_errors=True)
