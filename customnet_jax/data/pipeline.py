"""The grain input pipeline: tfds data source -> shard by process -> shuffle -> decode -> dropout -> batch.

Order per process: source[process_index::process_count] (disjoint shards), shuffle (seeded, reshuffled every
epoch), repeat, decode, dropout flags (seeded by the element's position, so they differ across epochs and
resume exactly), batch (drop_remainder), then `to_iter_dataset` with a small read prefetch and, with
num_workers > 0, `mp_prefetch` worker processes. Every step is a function of the element index, so
`iterator.get_state()` / `set_state()` (or grain.checkpoint with orbax) resume bit-exactly.
"""

from __future__ import annotations

import pathlib

import grain
import numpy as np
import tensorflow_datasets as tfds

from customnet_jax.data.named_source import NamedRecords
from customnet_jax.data.transforms import DecodePrecomputed, DecodeRaw, DrawDropout
from customnet_jax.experiment import Config

DEFAULT_DATA_DIR = pathlib.Path.home() / ".cache" / "customnet_jax" / "data"


def find_dataset(path: str | pathlib.Path) -> pathlib.Path | None:
    """The built tfds dataset folder at `path` (holding dataset_info.json) or the only one below it (<= 3 levels)."""
    path = pathlib.Path(path)
    if (path / "dataset_info.json").is_file():
        return path
    found = sorted(p.parent for p in path.glob("*/*/*/dataset_info.json")) if path.is_dir() else []
    if len(found) > 1:
        raise ValueError(f"{path} holds several datasets {[str(p) for p in found]}; set data.path to one of them")
    return found[0] if found else None


def open_source(path: str | pathlib.Path, split: str):
    """(tfds array_record data source of `split`, its features) of the built dataset at `path`."""
    folder = find_dataset(path)
    if folder is None:
        raise FileNotFoundError(f"no built tfds dataset at {path}; build one with customnet_jax.data.build(...) "
                                "or customnet_jax.data.precompute(...)")
    builder = tfds.builder_from_directory(str(folder))
    if split not in builder.info.splits:
        raise ValueError(f"dataset {folder} has splits {list(builder.info.splits)}, not {split!r}")
    return NamedRecords(builder.as_data_source(split=split), folder, split, builder.info), builder.info.features


def dataset_path(config: Config, process_count: int = 1) -> pathlib.Path:
    """config.data.path's dataset. For source "synthetic" a folder that is not itself a dataset is a data_dir:
    the world of config.data's synthetic_* / image_size fields is built there on first use (single process)."""
    data = config.data
    root = pathlib.Path(data.path) if data.path else DEFAULT_DATA_DIR
    if data.source != "synthetic" or (root / "dataset_info.json").is_file():
        folder = find_dataset(root)
        if folder is None:
            raise FileNotFoundError(f"no built tfds dataset at {root} (data.source={data.source!r}); build one "
                                    "with customnet_jax.data.build(...) or customnet_jax.data.precompute(...)")
        return folder
    from customnet_jax.data.builders import build, config_name  # only for the synthetic world
    from customnet_jax.data.synthetic import named_world

    world = named_world(data.synthetic_world, image_size=data.image_size or config.model.resolution,
                        seed=data.synthetic_seed)
    params = {"world": world, "num_examples": data.synthetic_examples}
    built = sorted(root.glob(f"customnet_synthetic/{config_name(params)}/*/dataset_info.json"))
    if built:
        return built[-1].parent
    if process_count > 1:
        raise FileNotFoundError(f"the synthetic dataset is not built under {root}: build it once before a "
                                "multi-process run (a single-process make_iterator or customnet_jax.data.build)")
    return build("synthetic", root, **params)[0]


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence(list(parts)).generate_state(1)[0])


def make_dataset(config: Config, *, process_index: int = 0, process_count: int = 1, split: str | None = None,
                 shuffle: bool = True, num_epochs: int | None = None, keep_id: bool = False) -> grain.MapDataset:
    """Per-example MapDataset of this process's shard (raw or precomputed form, with the three drop flags)."""
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} outside [0, {process_count})")
    source, features = open_source(dataset_path(config, process_count), split or config.data.split)
    if len(source) < process_count:
        raise ValueError(f"{len(source)} examples cannot be shared by {process_count} processes")
    precomputed = "target_mean" in features
    ds = grain.MapDataset.source(source)[process_index::process_count]
    if shuffle:
        ds = ds.shuffle(seed=_seed(config.data.shuffle_seed, 0))
    ds = ds.repeat(num_epochs)
    ds = ds.map(DecodePrecomputed(keep_id) if precomputed else DecodeRaw(config.model.resolution, keep_id))
    t = config.train
    dropout = DrawDropout(t.image_dropout, tuple(t.object_latent_dropout), t.text_dropout)
    return ds.random_map(dropout, seed=_seed(config.data.shuffle_seed, 1, process_index))


def _mark_absl_flags_parsed() -> None:
    """grain's worker processes read absl flags; outside an absl app they are unparsed and reading them fails."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


def make_iterator(config: Config, *, process_index: int, process_count: int, batch_size_per_host: int,
                  split: str | None = None, num_epochs: int | None = None, keep_id: bool = False,
                  shuffle: bool = True) -> grain.DatasetIterator:
    """This host's batches (see customnet_jax.data for the batch layout): a grain iterator with get/set_state.

    num_epochs None repeats forever; a finite run drops the last partial batch. With config.data.num_workers > 0
    batches are made in worker processes (entry scripts need an `if __name__ == "__main__":` guard).
    """
    ds = make_dataset(config, process_index=process_index, process_count=process_count, split=split,
                      shuffle=shuffle, num_epochs=num_epochs, keep_id=keep_id)
    ds = ds.batch(batch_size_per_host, drop_remainder=True)
    data = config.data
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=data.read_threads, prefetch_buffer_size=data.prefetch))
    if data.num_workers > 0:
        _mark_absl_flags_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=data.num_workers,
                                                         per_worker_buffer_size=data.prefetch))
    return iter(it)
