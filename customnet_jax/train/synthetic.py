"""A small in-memory data source of random examples in the data pipeline's batch format (tests, smoke runs).

Same interface as `customnet_jax.data.make_iterator`: a grain DatasetIterator (get_state / set_state) of
host-numpy batches of `batch_size_per_host` samples. Host `i` of `n` gets rows [i B/n, (i + 1) B/n) of the
global batch, so a run on n hosts sees exactly the batches of a one-host run.

Each example is a fixed random draw (seeded by its index). The object latent / location image is a copy of
the target, so a model can learn the task (used by the overfitting test). The dropout flags are drawn per
position in the stream with the config's probabilities (docs/model.md §7), as the real pipeline does.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from customnet_jax.experiment import Config

TOKENS = 77


def _example(config: Config, index: int, form: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([config.data.shuffle_seed, 17, index])
    mc = config.model
    r, h, c = mc.resolution, mc.latent_size, mc.latent_channels
    d = mc.context_dim
    view = rng.standard_normal(4).astype(np.float32)
    box = np.array([0.25, 0.25, 0.75, 0.75], np.float32)  # the painted-white square of the background below
    if form == "precomputed":
        mean = rng.standard_normal((h, h, c)).astype(np.float32)
        return {"target_mean": mean, "target_logvar": np.full((h, h, c), -6.0, np.float32),
                "location_latent": mean.copy(), "background_latent": rng.standard_normal((h, h, c)).astype(np.float32),
                "image_embedding": rng.standard_normal(d).astype(np.float32),
                "text_embedding": rng.standard_normal((TOKENS, d)).astype(np.float32), "view": view, "box": box}
    target = rng.uniform(-1, 1, (r, r, 3)).astype(np.float32)
    background = target.copy()
    background[r // 4: 3 * r // 4, r // 4: 3 * r // 4] = 1.0
    vocab = mc.text_encoder.vocab_size if mc.text_encoder is not None else 49408
    return {"target": target, "object": rng.uniform(-1, 1, (r, r, 3)).astype(np.float32),
            "location": target.copy(), "background": background, "view": view, "box": box,
            "tokens": rng.integers(0, vocab, TOKENS).astype(np.int32)}


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
    if form not in ("raw", "precomputed"):
        raise ValueError(f"form {form!r}: use 'raw' or 'precomputed'")
    examples = [_example(config, i, form) for i in range(num_examples)]
    global_batch = batch_size_per_host * process_count
    lo, hi = process_index * batch_size_per_host, (process_index + 1) * batch_size_per_host

    def host_rows(batch: dict) -> dict:
        return {k: v[lo:hi] for k, v in batch.items()}

    ds = (grain.MapDataset.range(num_examples).shuffle(config.data.shuffle_seed).repeat()
          .map_with_index(lambda position, i: dict(examples[i], **_flags(config, position)))
          .batch(global_batch, drop_remainder=True).map(host_rows))
    # a small read-ahead: grain's default (16 threads, 500 elements) would spend seconds of CPU at start
    return iter(ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
