"""tensorflow-datasets builders (array_record files, no TensorFlow) for the three raw sources, and `build`.

  build("synthetic", data_dir, image_size=64, num_examples=1024)          the synthetic world
  build("views", data_dir, path=views_release_folder, image_size=256, ...)  Zero-1-to-3 renders
  build("pairs", data_dir, path=folder_or_manifest, image_size=256)        prepared natural pairs
Each writes the raw records of `records.py` to data_dir/<builder>/<config name>/1.0.0 with "train" and
"validation" splits, skips bad items (reported in the log and in skipped.json beside the data), and returns
(dataset folder, SkipReport). The config name defaults to a hash of the parameters and of the source's
fingerprint (every file's path, size and modification time), so a different build, or the same one after the
source changed, never reuses an old one; with an explicit `name` a changed source is refused unless
`rebuild=True`. A source where every item is bad is one error naming it. Read a dataset with
`tfds.builder_from_directory(folder).as_data_source(split)`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import pathlib
import shutil

import tensorflow_datasets as tfds

from customnet_jax.data import pairs, records, views
from customnet_jax.data.synthetic import World, scene

VALIDATION_SEED_OFFSET = 1 << 30  # synthetic validation scenes: seeds 2^30, 2^30 + 1, ...
SPLITS = ("validation", "train")  # the small split first: if all of it is bad, the retry without it is cheap


@dataclasses.dataclass
class _SplitsConfig(tfds.core.BuilderConfig):
    splits: tuple[str, ...] = SPLITS


@dataclasses.dataclass
class SyntheticConfig(_SplitsConfig):
    world: World = World()  # its image_size is the stored size
    num_examples: int = 1024
    num_validation: int = 32


@dataclasses.dataclass
class ViewsConfig(_SplitsConfig):
    path: str = ""  # the views_release folder
    image_size: int = 256
    pairs_per_object: int = 4
    seed: int = 0
    backgrounds: str = ""  # folder of background pictures; "" = no placement (box = the whole picture)
    place_fraction: float = 1.0  # with backgrounds: the fraction of pairs placed in a box over one
    box_range: tuple[float, float] = (0.4, 0.9)
    captions: str = ""  # JSON {object id: caption}
    alpha_mode: str = "blend"  # "blend" | "zero123" (see images.py)


@dataclasses.dataclass
class PairsConfig(_SplitsConfig):
    path: str = ""  # a folder of per-photo folders (docs/model.md §10) or a .jsonl manifest
    image_size: int = 256


class _RawBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")
    # tfds looks for a checksums file beside the builder's code; for a module of an ordinary package that lookup
    # imports `importlib_resources` (not installed). We download nothing: no code path, no checksums.
    code_path = None

    def __init__(self, **kwargs):
        self.report = records.SkipReport()
        self.empty_splits: list[str] = []
        super().__init__(**kwargs)

    def _size(self) -> int:
        return self.builder_config.image_size

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=records.raw_features(self._size()),
                                     description=self.__doc__)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._counted(split) for split in self.builder_config.splits}

    def _counted(self, split):
        count = 0
        for item in self._generate_examples(split):
            count += 1
            yield item
        if count == 0:  # tfds refuses an empty split; build() then retries without it
            self.empty_splits.append(split)


class CustomnetSynthetic(_RawBuilder, skip_registration=True):
    """Pairs from the synthetic world (synthetic.scene)."""

    def _size(self) -> int:
        return self.builder_config.world.image_size

    def _generate_examples(self, split):
        config = self.builder_config
        count, offset = ((config.num_examples, 0) if split == "train"
                         else (config.num_validation, VALIDATION_SEED_OFFSET))
        for i in range(offset, offset + count):
            s = scene(i, config.world)
            key = f"{i:010d}"
            yield key, records.raw_record(key, s.target, s.object, s.view, s.box, s.caption)


class CustomnetViews(_RawBuilder, skip_registration=True):
    """Pairs of distinct views of Zero-1-to-3 / Objaverse renders (views.py)."""

    def _generate_examples(self, split):
        c = self.builder_config
        yield from views.view_records(c.path, split, size=c.image_size, pairs_per_object=c.pairs_per_object,
                                      seed=c.seed, backgrounds=c.backgrounds, place_fraction=c.place_fraction,
                                      box_range=tuple(c.box_range), captions=c.captions, alpha_mode=c.alpha_mode,
                                      report=self.report)


class CustomnetPairs(_RawBuilder, skip_registration=True):
    """Prepared natural-image pairs (pairs.py)."""

    def _generate_examples(self, split):
        c = self.builder_config
        yield from pairs.pair_records(c.path, split, size=c.image_size, report=self.report)


BUILDERS = {"synthetic": (CustomnetSynthetic, SyntheticConfig), "views": (CustomnetViews, ViewsConfig),
            "pairs": (CustomnetPairs, PairsConfig)}


def config_name(params: dict) -> str:
    """A short stable name for a parameter set."""
    return "p" + hashlib.sha1(repr(sorted(params.items())).encode()).hexdigest()[:10]


FINGERPRINT_FILE = "source_fingerprint.json"


def source_fingerprint(params: dict) -> str:
    """sha1 over (path, size, mtime) of every file of the source's path / backgrounds / captions (stat only)."""
    digest = hashlib.sha1()
    for key in ("path", "backgrounds", "captions"):
        if not params.get(key):
            continue
        root = pathlib.Path(params[key])
        files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
        for file in files:
            stat = file.stat()
            digest.update(f"{file}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def build(source: str, data_dir: str | pathlib.Path, *, name: str | None = None, rebuild: bool = False,
          **params) -> tuple[pathlib.Path, records.SkipReport]:
    """Build (or find already built) the `source` dataset under data_dir -> (dataset folder, skip report).
    `rebuild`: build again over an existing build of this name (needed after the source changed)."""
    if source not in BUILDERS:
        raise ValueError(f"unknown source {source!r}; expected one of {tuple(BUILDERS)}")
    builder_cls, config_cls = BUILDERS[source]
    for key in ("path", "backgrounds", "captions"):
        if params.get(key):
            params[key] = str(pathlib.Path(params[key]).resolve())
            if not pathlib.Path(params[key]).exists():
                raise FileNotFoundError(f"{source} {key} {params[key]} does not exist")
    if source != "synthetic" and not params.get("path"):
        raise ValueError(f"build({source!r}, ...) needs path= (the source folder or manifest)")
    fingerprint = source_fingerprint(params)
    name = name or config_name({**params, **({"source_fingerprint": fingerprint} if params.get("path") else {})})
    builder = builder_cls(config=config_cls(name=name, **params), data_dir=str(data_dir), file_format="array_record")
    folder = pathlib.Path(builder.data_dir)
    if (folder / "dataset_info.json").is_file():
        recorded = folder / FINGERPRINT_FILE
        stored = json.loads(recorded.read_text()).get("sha1") if recorded.is_file() else None
        if rebuild:
            shutil.rmtree(folder)
        elif stored not in (None, fingerprint):
            raise ValueError(f"{folder} was built from {params.get('path')} before it changed (its files' sizes or "
                             "times differ): build again with rebuild=True, or choose a new name")
        else:
            return folder, records.SkipReport.load(folder)
    try:
        _prepare(builder, data_dir)
    except AssertionError:
        if not builder.empty_splits or "train" in builder.empty_splits:
            raise _no_examples(source, params, builder.report) from None
        logging.warning("building %s: split %s is empty (every item bad); building without it", folder,
                        builder.empty_splits)
        splits = tuple(s for s in SPLITS if s not in builder.empty_splits)
        report = builder.report
        builder = builder_cls(config=config_cls(name=name, splits=splits, **params), data_dir=str(data_dir),
                              file_format="array_record")
        builder.report = report
        try:
            _prepare(builder, data_dir)
        except AssertionError:  # the train split is empty too
            raise _no_examples(source, params, builder.report) from None
    builder.report.save(folder)
    (folder / FINGERPRINT_FILE).write_text(json.dumps({"sha1": fingerprint}))
    if builder.report.count:
        logging.warning("building %s: %s (list in %s)", folder, builder.report.summary(),
                        folder / records.REPORT_FILE)
    return folder, builder.report


def _no_examples(source: str, params: dict, report: records.SkipReport) -> ValueError:
    return ValueError(f"the {source} source {params.get('path') or ''} has no usable train examples: every item is "
                      f"bad; {report.summary()}")


def _prepare(builder: tfds.core.DatasetBuilder, data_dir) -> None:
    builder.download_and_prepare(download_dir=str(pathlib.Path(data_dir) / ".downloads"),
                                 download_config=tfds.download.DownloadConfig(try_download_gcs=False))
