"""A small in-memory data source of random examples in the data pipeline's batch format (tests, smoke runs).

Same interface as `customnet_jax.data.make_iterator`: a grain DatasetIterator (get_state / set_state) of
host-numpy batches of `batch_size_per_host` samples. Host `i` of `n` gets rows [i B/n, (i + 1) B/n) of the
global batch, so a run on n hosts sees exactly the batches of a one-host run.

Each example is a fixed random draw (seeded by its index). The object latent / location image is a copy of
the target, so a model can learn the task (used by the overfitting test). The dropout flags are drawn per
position in the stream with the config's probabilities, as the real pipeline does (docs/conditioning.md).
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from customnet_jax.conditioning import batch
from customnet_jax.experiment import Config


def _example(config: Config, index: int, form: str) -> dict[str, np.ndarray]:
    """One example in `form`, shaped by conditioning.batch."""
    rng = np.random.default_rng([config.data.shuffle_seed, 17, index])
    fields = batch.fields(config.model, form)

    def normal(key: str) -> np.ndarray:
        return rng.standard_normal(fields[key].shape).astype(np.float32)

    view = normal("view")
    box = np.array([0.25, 0.25, 0.75, 0.75], np.float32)  # the painted-white square of the background below
    if form == "precomputed":
        mean = normal("target_mean")
        example = {"target_mean": mean, "target_logvar": np.full(mean.shape, -6.0, np.float32),
                   "location_latent": mean.copy(), "background_latent": normal("background_latent"),
                   "image_embedding": normal("image_embedding"), "view": view, "box": box}
        if "text_embedding" in fields:
            example["text_embedding"] = normal("text_embedding")
    else:
        shape = fields["target"].shape
        r = shape[0]
        target = rng.uniform(-1, 1, shape).astype(np.float32)
        background = target.copy()
        background[r // 4: 3 * r // 4, r // 4: 3 * r // 4] = 1.0
        text = config.model.text_encoder
        vocab = text.vocab_size if text is not None else 49408
        example = {"target": target, "object": rng.uniform(-1, 1, shape).astype(np.float32),
                   "location": target.copy(), "background": background, "view": view, "box": box,
                   "tokens": rng.integers(0, vocab, fields["tokens"].shape).astype(np.int32)}
    batch.check_example(example, config.model, form)
    return example


def _flags(config: Config, position: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([config.data.shuffle_seed, 23, position])
    train = config.train
    r, low_high, text = rng.uniform(), train.object_latent_dropout, rng.uniform()
    return {"drop_image": np.bool_(r < train.image_dropout), "drop_object": np.bool_(low_high[0] <= r < low_high[1]),
            "drop_text": np.bool_(text < train.text_dropout)}


def make_iterator(config: Config, *, process_index: int = 0, process_count: int = 1, batch_size_per_host: int,
                  num_examples: int = 64, form: str = "raw") -> Any:
    """An endless, reshuffled-every-epoch iterator over `num_examples` random examples; `form` 'raw' or
    'precomputed' (the two batch formats of the data pipeline)."""
    if form not in batch.FORMS:
        raise ValueError(f"form {form!r}: use one of {batch.FORMS}")
    examples = [_example(config, i, form) for i in range(num_examples)]
    global_batch = batch_size_per_host * process_count
    lo, hi = process_index * batch_size_per_host, (process_index + 1) * batch_size_per_host

    def host_rows(rows: dict) -> dict:
        return {k: v[lo:hi] for k, v in rows.items()}

    ds = (grain.MapDataset.range(num_examples).shuffle(config.data.shuffle_seed).repeat()
          .map_with_index(lambda position, i: dict(examples[i], **_flags(config, position)))
          .batch(global_batch, drop_remainder=True).map(host_rows))
    # a small read-ahead: grain's default (16 threads, 500 elements) would spend seconds of CPU at start
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
