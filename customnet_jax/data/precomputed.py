"""Encode the frozen parts once: a raw dataset -> a precomputed tfds dataset (no VAE / CLIP in the train step).

Per example: the precomputed form of `conditioning.batch` (target posterior, location and background latents,
CLIP embeddings, view, box), plus id and caption. Drop flags are still drawn by the pipeline at read time.
"""

from __future__ import annotations

import dataclasses
import pathlib
import shutil
from collections.abc import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds
from flax import nnx

from customnet_jax.conditioning.batch import ENCODER_INPUTS, TEXT_LENGTH, precomputed_fields
from customnet_jax.data.builders import config_name
from customnet_jax.data.pipeline import dataset_path, open_source
from customnet_jax.data.transforms import DecodeRaw
from customnet_jax.experiment import Config


@dataclasses.dataclass
class PrecomputedConfig(tfds.core.BuilderConfig):
    source: str = ""  # the raw dataset folder
    resolution: int = 256
    latent_size: int = 32
    latent_channels: int = 4
    embedding_dim: int = 768  # CLIP image embedding
    text_dim: int = 768  # text embedding width; 0: no text encoder (Zero-1-to-3)
    text_length: int = TEXT_LENGTH
    batch_size: int = 16


def precomputed_features(c: PrecomputedConfig) -> tfds.features.FeaturesDict:
    """The tfds features of conditioning.batch's precomputed form (stored dtypes), plus id and caption."""
    fields = precomputed_fields(c.latent_size, c.latent_channels, c.embedding_dim, c.text_dim, c.text_length)
    features = {"id": tfds.features.Text(), "caption": tfds.features.Text()}
    for key, field in fields.items():
        features[key] = tfds.features.Tensor(shape=field.shape, dtype=field.stored or field.dtype)
    return tfds.features.FeaturesDict(features)


Encoder = Callable[[dict], dict]


class CustomnetPrecomputed(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Frozen-encoder outputs of a raw CustomNet dataset."""

    VERSION = tfds.core.Version("1.1.0")  # 1.1: + box
    code_path = None  # see builders._RawBuilder

    def __init__(self, *, encoder: Encoder | None = None, **kwargs):
        self.encoder = encoder
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=precomputed_features(self.builder_config),
                                     description=self.__doc__)

    def _split_generators(self, dl_manager):
        del dl_manager
        splits = tfds.builder_from_directory(self.builder_config.source).info.splits
        return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split):
        c = self.builder_config
        source, _ = open_source(c.source, split)
        ds = grain.MapDataset.source(source).map(DecodeRaw(c.resolution, keep_id=True)).batch(c.batch_size)
        start = 0
        for batch in ds.to_iter_dataset(grain.ReadOptions(num_threads=2, prefetch_buffer_size=2)):
            out = self.encoder({k: batch[k] for k in ENCODER_INPUTS})
            for j in range(len(batch["id"])):
                record = {k: v[j] for k, v in out.items()}
                if "text_embedding" in record:
                    record["text_embedding"] = record["text_embedding"].astype(np.float16)
                yield start + j, {**record, "id": str(batch["id"][j]), "caption": str(batch["caption"][j]),
                                  "view": batch["view"][j], "box": batch["box"][j]}
            start += len(batch["id"])


def make_encoder(model, batch_size: int) -> Encoder:
    """A host function batch -> encodings running the model's frozen parts under one jit (batches padded)."""
    graphdef, state = nnx.split(model)
    has_text = model.config.text_encoder is not None

    @jax.jit
    def encode(state, target, location, background, obj, tokens):
        m = nnx.merge(graphdef, state)
        mean, logvar = m.encode(jnp.concatenate([target, location, background]))
        n = target.shape[0]
        out = {"target_mean": mean[:n], "target_logvar": logvar[:n], "location_latent": mean[n : 2 * n],
               "background_latent": mean[2 * n :], "image_embedding": m.image_embedding(obj)}
        if has_text:
            out["text_embedding"] = m.encode_text(tokens)
        return out

    def run(batch: dict) -> dict:
        n = len(batch["target"])
        padded = [np.concatenate([batch[k], np.repeat(batch[k][-1:], batch_size - n, 0)])
                  for k in ENCODER_INPUTS]
        return {k: np.asarray(v)[:n] for k, v in encode(state, *padded).items()}

    run.program = encode  # the jitted program itself, for ahead-of-time compilation (customnet_jax/aot)
    return run


def precompute(config: Config, model, out_dir: str | pathlib.Path, *, batch_size: int = 16,
               name: str | None = None, encoder: Encoder | None = None, overwrite: bool = False) -> pathlib.Path:
    """Encode config.data's raw dataset (all splits) with `model`'s frozen parts -> the precomputed dataset folder.

    Train on it with config.data.source = "precomputed", path = the returned folder. The default name hashes the
    source folder and the model config, not the weights: pass a new `name` (or overwrite) for new weights.
    `encoder` replaces the model (a function batch -> encodings, e.g. for benchmarks).
    """
    source = dataset_path(config)
    m = config.model
    params = {"source": str(source.resolve()), "resolution": m.resolution, "latent_size": m.latent_size,
              "latent_channels": m.latent_channels, "embedding_dim": m.image_encoder.projection_dim,
              "text_dim": 0 if m.text_encoder is None else m.text_encoder.width}
    bc = PrecomputedConfig(name=name or config_name({**params, "model": repr(m)}), batch_size=batch_size, **params)
    if encoder is None:
        encoder = make_encoder(model, batch_size)
    builder = CustomnetPrecomputed(encoder=encoder, config=bc, data_dir=str(out_dir), file_format="array_record")
    folder = pathlib.Path(builder.data_dir)
    if overwrite and folder.exists():
        shutil.rmtree(folder)
    builder.download_and_prepare(download_dir=str(pathlib.Path(out_dir) / ".downloads"),
                                 download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return folder
