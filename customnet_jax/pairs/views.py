"""The novel-view stage: our Zero-1-to-3 (a model folder in zero123 mode) on the segmented object.

The object is cut out with its mask and centred on white (`conditioning.object_on_white`, longer side 200/256 of
the canvas, as the zero123 demo and CustomNet's inference do), then sampled at each relative view
(polar, azimuth, radius) in degrees. Views are drawn per photo from a generator seeded by (seed, photo id), so a
photo gets the same views whichever process builds it. docs/model.md §10: polar and azimuth from [0, 60) degrees with
a random sign each; radius 0 unless max_radius > 0 (then uniform in (-max_radius, max_radius)).
"""

from __future__ import annotations

import hashlib
import pathlib
from typing import Any, Protocol

import numpy as np

from customnet_jax import conditioning

OBJECT_FRACTION = 200 / 256
_PIPELINES: dict[tuple[str, int], Any] = {}  # model folder (path, config mtime) -> its Pipeline, once per process


def load_pipeline(path: str | pathlib.Path) -> Any:
    """The Pipeline of a zero123 model folder, loaded once per process: builds run again in the same process (a
    notebook, the tests) reuse its weights and its compiled sampler instead of loading and tracing again."""
    from customnet_jax.sampling.pipeline import Pipeline

    path = pathlib.Path(path).absolute()
    config = path / "config.json"
    key = (str(path.resolve()), config.stat().st_mtime_ns if config.is_file() else 0)
    if key not in _PIPELINES:
        _PIPELINES[key] = Pipeline.from_folder(path)
    return _PIPELINES[key]


def photo_seed(seed: int, image_id: str) -> int:
    """A 31-bit seed for one photo, from the run's seed and the photo's id (independent of sharding)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{image_id}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def random_views(rng: np.random.Generator, count: int, max_polar: float = 60.0, max_azimuth: float = 60.0,
                 max_radius: float = 0.0, decimals: int = 2) -> list[list[float]]:
    """`count` relative views [polar, azimuth, radius] in degrees: |polar| in [0, max_polar), |azimuth| in
    [0, max_azimuth), each with a random sign; rounded to `decimals` (the rounded values are the ones used)."""
    if count < 1:
        raise ValueError(f"views per image must be >= 1, got {count}")
    polar = rng.uniform(0, max_polar, count) * rng.choice([-1.0, 1.0], count)
    azimuth = rng.uniform(0, max_azimuth, count) * rng.choice([-1.0, 1.0], count)
    radius = rng.uniform(-max_radius, max_radius, count) if max_radius > 0 else np.zeros(count)
    # round towards zero so that rounding never reaches the open bound (59.999 -> 59.99, not 60.0)
    scale = 10.0**decimals
    return [[float(np.trunc(v * scale) / scale) + 0.0 for v in row] for row in zip(polar, azimuth, radius, strict=True)]


class ViewMaker(Protocol):
    resolution: int

    def __call__(self, photo: np.ndarray, mask: np.ndarray, views: list[list[float]], seed: int) -> np.ndarray: ...


class ViewSynthesizer:
    """Zero-1-to-3 novel views of a masked object: (photo, mask, views, seed) -> uint8 (V, R, R, 3) on white."""

    def __init__(self, pipeline: Any, steps: int = 50, guidance: float = 3.0, eta: float = 0.0):
        if not pipeline.config.is_zero123:
            raise ValueError("the view stage needs a Zero-1-to-3 model folder (config with no text encoder); "
                             "this is a CustomNet model")
        self.pipeline, self.steps, self.guidance, self.eta = pipeline, steps, guidance, eta
        self.resolution = int(pipeline.config.resolution)
        self.path = None if pipeline.folder is None else str(pipeline.folder.path)

    @classmethod
    def from_folder(cls, path: str | pathlib.Path, **kwargs: Any) -> ViewSynthesizer:
        """The view stage of a model folder (see `load_pipeline`); kwargs: steps, guidance, eta."""
        return cls(load_pipeline(path), **kwargs)

    def object_image(self, photo: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The object cut out with its mask, centred on a white R x R canvas -> float32 in [-1, 1]."""
        size = max(1, round(OBJECT_FRACTION * self.resolution))
        return conditioning.object_on_white(photo, mask, canvas=self.resolution, object_size=size)

    def __call__(self, photo: np.ndarray, mask: np.ndarray, views: list[list[float]], seed: int) -> np.ndarray:
        result = self.pipeline(self.object_image(photo, mask), views=views, num_samples=1, seed=seed,
                               steps=self.steps, guidance=self.guidance, sampler="ddim",
                               sampler_options={"eta": self.eta}, progress=False)
        return result.images[:, 0]
