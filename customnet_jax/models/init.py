"""Random initial parameters, drawn on the host with numpy from the abstract model's shapes.

One compiled init program for even the tiny model takes ~50 s of XLA compile on a CPU (800 random ops),
and eager construction compiles each initializer; numpy draws the full-size model in seconds. The
scheme follows LDM: fan-in scaled normals, zero biases, unit norm scales, and zero-initialised output
layers of every residual branch (`zero_module` in LDM: res-block conv2, transformer proj_out, the UNet's
final conv), so a fresh UNet starts as an identity-like map; cc_projection starts as the identity on the
CLIP columns (docs/model.md §4).
"""

from __future__ import annotations

import zlib

import numpy as np

from customnet_jax.weights.rules import Path

ZERO_INIT = (("resnets", "conv2"), ("resnet_1", "conv2"), ("resnet_2", "conv2"), ("proj_out",), ("unet", "conv_out"))


def _is_zero_init(path: Path) -> bool:
    if path[0] != "unet" or path[-1] != "kernel":
        return False
    names = [p for p in path if isinstance(p, str)]
    return any(all(n in names for n in pattern) and names[-2] == pattern[-1] for pattern in ZERO_INIT)


def initial_value(path: Path, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    name = path[-1]
    if path[:1] == ("cc_projection",) and name == "kernel":
        return np.eye(*shape, dtype=np.float32)  # (772, 768): identity on the embedding rows, 0 on the view
    if name == "bias":
        return np.zeros(shape, np.float32)
    if name == "scale":
        return np.ones(shape, np.float32)
    if name == "kernel":
        if _is_zero_init(path):
            return np.zeros(shape, np.float32)
        fan_in = int(np.prod(shape[:-1]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)
    return (0.02 * rng.standard_normal(shape)).astype(np.float32)  # embeddings, class/position embeddings


def initial_params(shapes: dict[Path, tuple[int, ...]], seed: int) -> dict[Path, np.ndarray]:
    """path -> initial value for every parameter; each path has its own stream (adding a layer does not
    change the others' draws)."""
    params = {}
    for path, shape in shapes.items():
        rng = np.random.default_rng([seed, zlib.crc32("/".join(map(str, path)).encode())])
        params[path] = initial_value(path, tuple(shape), rng)
    return params
