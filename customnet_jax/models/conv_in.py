"""Widening the UNet's input convolution: a model with more condition channels starts from one with fewer.

Zero-1-to-3 widened Stable Diffusion's conv_in 4 -> 8 (the object latent) and the composition model widens
CustomNet's 8 -> 12 (the background latent); the new input channels start at zero, so the widened model computes
exactly what the narrower one did until training moves them.
"""

from __future__ import annotations

import numpy as np

CONV_IN = ("unet", "conv_in", "kernel")  # the parameter's path in CustomNet


def can_widen(source_shape: tuple[int, ...], shape: tuple[int, ...]) -> bool:
    """Whether a conv kernel (kh, kw, cin, cout) of `source_shape` zero-pads to `shape` (same kh, kw, cout)."""
    return (len(source_shape) == 4 and len(shape) == 4 and tuple(source_shape[:2]) == tuple(shape[:2])
            and source_shape[3] == shape[3] and source_shape[2] <= shape[2])


def widen_conv_in(kernel: np.ndarray, in_channels: int) -> np.ndarray:
    """conv_in kernel (3, 3, C, O) -> float32 (3, 3, in_channels, O), the new input channels zero."""
    kernel = np.asarray(kernel)
    if kernel.ndim != 4 or kernel.shape[2] > in_channels:
        raise ValueError(f"conv_in kernel {kernel.shape} cannot widen to {in_channels} input channels "
                         "(only more input channels can be added)")
    wide = np.zeros((*kernel.shape[:2], in_channels, kernel.shape[3]), np.float32)
    wide[:, :, :kernel.shape[2]] = kernel
    return wide
