"""The relative viewpoint T of CustomNet / Zero-1-to-3: condition camera -> target camera (docs/conditioning.md).

T = [polar change (radians), sin(azimuth change), cos(azimuth change), radius change], float32 (..., 4).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def view_from_degrees(polar: Any, azimuth: Any, radius: Any = 0.0) -> np.ndarray:
    """T = [rad(polar), sin(rad(azimuth)), cos(rad(azimuth)), radius], broadcast -> (..., 4) float32."""
    polar, azimuth, radius = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (polar, azimuth, radius)))
    az = np.radians(azimuth)
    return np.stack([np.radians(polar), np.sin(az), np.cos(az), radius], axis=-1).astype(np.float32)


def _spherical(rt: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(polar, azimuth, radius) of the camera centre C = -R^T t of world->camera matrices (..., 3, 4)."""
    c = -np.einsum("...ji,...j->...i", rt[..., :3], rt[..., 3])  # (..., 3)
    x, y, z = c[..., 0], c[..., 1], c[..., 2]
    return np.arctan2(np.hypot(x, y), z), np.arctan2(y, x), np.linalg.norm(c, axis=-1)


def view_from_cameras(target_rt: Any, condition_rt: Any) -> np.ndarray:
    """Relative view T from condition to target camera (Zero-1-to-3 `get_T`): (3, 4) -> (4,), (N, 3, 4) -> (N, 4)."""
    target_rt, condition_rt = np.asarray(target_rt, np.float64), np.asarray(condition_rt, np.float64)
    for name, rt in (("target_rt", target_rt), ("condition_rt", condition_rt)):
        if rt.ndim not in (2, 3) or rt.shape[-2:] != (3, 4):
            raise ValueError(f"{name} has shape {rt.shape}; expected a 3x4 world->camera matrix [R | t], (3, 4) "
                             "or batched (N, 3, 4)")
    if target_rt.shape != condition_rt.shape:
        raise ValueError(f"target_rt {target_rt.shape} and condition_rt {condition_rt.shape} shapes differ")
    polar_t, az_t, radius_t = _spherical(target_rt)
    polar_c, az_c, radius_c = _spherical(condition_rt)
    d_az = np.mod(az_t - az_c, 2 * math.pi)
    return np.stack([polar_t - polar_c, np.sin(d_az), np.cos(d_az), radius_t - radius_c], -1).astype(np.float32)
