"""Low-rank adapters (LoRA, Hu et al. 2021) on the UNet's projections and convolutions.

An adapted nnx.Linear / nnx.Conv keeps its own parameters under the same paths (`.../to_q/kernel`) and gains
`lora_a` (in, r) or (kh, kw, cin, r) and `lora_b` (r, out):  y = base(x) + scaling * B(A(dropout(x))),
scaling = alpha / r. A convolution's A is a convolution with the base's kernel size, strides and padding, B a
1x1 one, so the pair folds into one kernel of the base's shape (`merged_kernel`). B starts at zero
(models/init.py's rules), so an adapted model computes exactly what its base does until B moves.

Which modules are adapted: `LoraConfig.targets`, regexes over "/"-joined module paths (as the parameter rules).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

# Presets for LoraConfig.targets: the attention projections (q, k, v, out and the text K/V; attn2's to_k / to_v are
# the object K/V), the feed-forward, the 1x1 convolutions (transformer proj_in / proj_out, res-block skips) and the
# 3x3 convolutions of the res blocks and resamplers.
ATTENTION = r"^unet/.*/attn[12]/to_(q|k|v|out|k_text|v_text)$"
FEED_FORWARD = r"^unet/.*/ff/(proj|out)$"
CONV_1X1 = r"^unet/.*/(proj_in|proj_out|skip)$"
CONV_3X3 = r"^unet/.*/(conv1|conv2|resample/conv)$"
ADAPTER_LEAF = r"/lora_[ab]$"
ZEROS = nnx.initializers.zeros  # placeholders: the base's own kernel and bias are put in right after


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """rank 0: no adapters (full training). Otherwise rank r, alpha (scaling alpha / r), input dropout."""

    rank: int = 0
    alpha: float = 1.0
    dropout: float = 0.0
    targets: tuple[str, ...] = (ATTENTION,)
    seed: int = 0  # of the dropout masks

    def __post_init__(self):
        if self.rank < 0 or not 0.0 <= self.dropout < 1.0 or not self.alpha == self.alpha:
            raise ValueError(f"LoraConfig: rank {self.rank} must be >= 0, dropout {self.dropout} in [0, 1), "
                             f"alpha {self.alpha} a number")

    @property
    def enabled(self) -> bool:
        return self.rank > 0


def _dropout(x: jax.Array, rate: float, seed: int) -> jax.Array:
    """Inverted dropout whose key comes from the input's own bits: every batch and timestep gets its own mask
    without a key threaded through the train step (the adapters train inside the unchanged step)."""
    bits = jax.lax.bitcast_convert_type(jax.lax.stop_gradient(jnp.sum(x.astype(jnp.float32))), jnp.uint32)
    keep = jax.random.bernoulli(jax.random.fold_in(jax.random.key(seed), bits), 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), jnp.zeros_like(x))


class _Adapter:
    """The low-rank branch shared by the Linear and Conv adapters."""

    def _init_adapter(self, a_shape: tuple[int, ...], rank: int, out: int, scaling: float, dropout: float,
                      seed: int) -> None:
        self.lora_a = nnx.Param(jnp.zeros((*a_shape, rank), jnp.float32))
        self.lora_b = nnx.Param(jnp.zeros((rank, out), jnp.float32))
        self.lora_scaling = float(scaling)
        self.lora_dropout = float(dropout)
        self.lora_seed = int(seed)

    def _low_rank(self, x: jax.Array, project) -> jax.Array:
        dtype = self.dtype or x.dtype
        if self.lora_dropout > 0:
            x = _dropout(x, self.lora_dropout, self.lora_seed)
        h = project(x, self.lora_a[...].astype(dtype))
        return self.lora_scaling * (h @ self.lora_b[...].astype(dtype))


class LoRALinear(nnx.Linear, _Adapter):
    def __init__(self, base: nnx.Linear, rank: int, scaling: float, dropout: float = 0.0, seed: int = 0):
        super().__init__(base.in_features, base.out_features, use_bias=base.use_bias, dtype=base.dtype,
                         precision=base.precision, kernel_init=ZEROS, bias_init=ZEROS, rngs=nnx.Rngs(0))
        self.kernel, self.bias = base.kernel, base.bias
        self._init_adapter((base.in_features,), rank, base.out_features, scaling, dropout, seed)

    def __call__(self, x: jax.Array) -> jax.Array:
        return super().__call__(x) + self._low_rank(x, lambda h, a: h @ a)


class LoRAConv(nnx.Conv, _Adapter):
    def __init__(self, base: nnx.Conv, rank: int, scaling: float, dropout: float = 0.0, seed: int = 0):
        super().__init__(base.in_features, base.out_features, base.kernel_size, base.strides, padding=base.padding,
                         use_bias=base.use_bias, dtype=base.dtype, precision=base.precision, kernel_init=ZEROS,
                         bias_init=ZEROS, rngs=nnx.Rngs(0))
        self.kernel, self.bias = base.kernel, base.bias
        self._init_adapter((*base.kernel_size, base.in_features), rank, base.out_features, scaling, dropout, seed)

    def __call__(self, x: jax.Array) -> jax.Array:
        strides = self.strides if isinstance(self.strides, (tuple, list)) else (self.strides,) * 2

        def project(h, a):
            return jax.lax.conv_general_dilated(h, a, strides, self.padding, precision=self.precision,
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        return super().__call__(x) + self._low_rank(x, project)


def merged_kernel(kernel: jax.Array, lora_a: jax.Array, lora_b: jax.Array, scaling: float) -> jax.Array:
    """The base kernel with the low-rank branch folded in: W + scaling (A B), for Linear and Conv kernels."""
    return kernel + scaling * jnp.einsum("...r,ro->...o", lora_a, lora_b)


def adaptable_modules(model: nnx.Module) -> dict[str, nnx.Module]:
    """"/"-joined path -> every nnx.Linear / nnx.Conv of the model's UNet."""
    return {"/".join(map(str, path)): module for path, module in nnx.iter_graph(model)
            if isinstance(module, (nnx.Linear, nnx.Conv)) and path and path[0] == "unet"}


def target_modules(model: nnx.Module, targets: tuple[str, ...]) -> list[str]:
    """The UNet module paths that `targets` select; a target that selects nothing is an error naming it."""
    modules = adaptable_modules(model)
    chosen = set()
    for pattern in targets:
        found = [p for p in modules if re.search(pattern, p)]
        if not found:
            raise ValueError(f"lora.targets: {pattern!r} matches no Linear / Conv module of the UNet "
                             f"(e.g. {next(iter(sorted(modules)), '')})")
        chosen.update(found)
    return sorted(chosen)


def add_adapters(model: nnx.Module, ranks: Mapping[str, int], scalings: Mapping[str, float] | float = 1.0,
                 dropout: float = 0.0, seed: int = 0) -> nnx.Module:
    """Replace each module named in `ranks` (path -> rank) by its adapted version, in place; returns `model`.
    Build under `models.build.abstract_model` (the adapters' parameters come from rules or a file)."""
    modules = adaptable_modules(model)
    for path, rank in ranks.items():
        if path not in modules:
            raise ValueError(f"LoRA: the model has no Linear / Conv module {path}")
        base = modules[path]
        scaling = scalings if isinstance(scalings, (int, float)) else scalings[path]
        kind = LoRAConv if isinstance(base, nnx.Conv) else LoRALinear
        *parent_path, name = path.split("/")
        parent = model
        for part in parent_path:
            parent = parent[int(part)] if part.isdigit() else getattr(parent, part)
        adapted = kind(base, rank, scaling, dropout, seed)
        if name.isdigit():
            parent[int(name)] = adapted
        else:
            setattr(parent, name, adapted)
    return model


def adapt(model: nnx.Module, config: LoraConfig) -> nnx.Module:
    """`model` with rank-`config.rank` adapters on `config.targets` (unchanged when config.rank is 0)."""
    if not config.enabled:
        return model
    paths = target_modules(model, config.targets)
    return add_adapters(model, dict.fromkeys(paths, config.rank), config.alpha / config.rank, config.dropout,
                        config.seed)
