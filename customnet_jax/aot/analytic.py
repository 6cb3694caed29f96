"""The model's analytic FLOP count: matmul and convolution multiply-adds (x 2) counted on the jaxpr, per sample.

Independent of any compiler: the reference the compiled count is read against (a compiled train step above
3 x forward + frozen encoders is the recomputation that remat adds; elementwise work is not counted).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
from flax import nnx

from customnet_jax.conditioning.features import frozen_features
from customnet_jax.models import layers
from customnet_jax.train import state as st


def matmul_flops(jaxpr: Any) -> float:
    """2 x multiply-adds of every dot_general and conv_general_dilated in a (closed) jaxpr, nested ones included."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape  # HWIO (NHWC convs): window x input features per output
            total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs[:-1])
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            total += matmul_flops(sub)
    return total


def _abstract_params(config: Any) -> tuple[nnx.GraphDef, dict, dict]:
    graphdef, shapes = st.graphdef_and_shapes(config)
    flat = {path: jax.ShapeDtypeStruct(shape, jnp.float32) for path, shape in shapes.items()}
    trainable, frozen = st.split_params(flat)
    return graphdef, trainable, frozen


def _written_out(graphdef: nnx.GraphDef, trainable: Any, frozen: Any) -> nnx.Module:
    """The model with jax's attention: the products as written (a Pallas kernel's jaxpr is one block's work)."""
    model = nnx.merge(graphdef, trainable, frozen)
    layers.set_attention(model, "xla")
    return model


def unet_forward_flops(config: Any) -> float:
    """One UNet forward of one sample (with its dual cross-attention to the 1 + 77 context tokens)."""
    graphdef, trainable, frozen = _abstract_params(config)
    mc = config.model
    h = mc.latent_size
    tokens = mc.unet.object_tokens + (0 if mc.is_zero123 else mc.text_encoder.max_length)
    x = jax.ShapeDtypeStruct((1, h, h, mc.unet.in_channels), jnp.float32)
    t = jax.ShapeDtypeStruct((1,), jnp.int32)
    context = jax.ShapeDtypeStruct((1, tokens, mc.context_dim), jnp.float32)
    forward = lambda p, x, t, c: _written_out(graphdef, p, frozen).unet(x, t, c)
    return matmul_flops(jax.make_jaxpr(forward)(trainable, x, t, context).jaxpr)


def encoder_flops(config: Any, batch: dict) -> float:
    """The frozen encoders of one sample of a raw batch (VAE encodes, CLIP image and text); 0 if precomputed."""
    if "target_mean" in batch:
        return 0.0
    graphdef, trainable, frozen = _abstract_params(config)
    one = {k: jax.ShapeDtypeStruct((1, *v.shape[1:]), v.dtype) for k, v in batch.items()}
    one["posterior_noise"] = jax.ShapeDtypeStruct((1, config.model.latent_size, config.model.latent_size,
                                                   config.model.latent_channels), jnp.float32)
    null_text = jax.ShapeDtypeStruct((1, config.model.text_encoder.max_length, config.model.context_dim), jnp.float32)
    encode = lambda p, f, b, n: frozen_features(_written_out(graphdef, p, f), config, b, n)
    return matmul_flops(jax.make_jaxpr(encode)(trainable, frozen, one, null_text).jaxpr)


def train_flops_per_sample(config: Any, batch: dict) -> float:
    """Forward + backward of the UNet (3 x forward) plus the frozen encoders' forward, per sample."""
    return 3.0 * unet_forward_flops(config) + encoder_flops(config, batch)


# matmuls of one splash attention kernel call, each 2 x Tq x Tk x head_dim FLOPs per (sample, head): forward
# q.k and p.v; backward dq: s again, dp = do.v, dq = ds.k; dkv: s again, dp, dv = p.do, dk = ds.q
SPLASH_MATMULS = (("dkv", 4), ("dq", 3), ("fwd", 2))


@dataclasses.dataclass(frozen=True)
class KernelCall:
    name: str
    flops: float
    bytes: float  # operands + results, each once (a lower bound: the kernel re-reads k / v per query block)


def pallas_kernel_calls(jaxpr: Any) -> list[KernelCall]:
    """The Pallas splash attention kernels of a (closed) jaxpr, nested ones included, with their work: XLA's cost
    analysis leaves custom calls out. Inside `shard_map` the shapes, and so the work, are one device's."""
    calls = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "pallas_call":
            name = str(eqn.params.get("name_and_src_info", eqn.params.get("name", ""))).split(" ")[0]
            matmuls = next((m for key, m in SPLASH_MATMULS if f"_{key}" in name), 0)
            heads = [v.aval.shape for v in eqn.invars if len(v.aval.shape) == 4]  # (B, heads, T, head_dim): q, k, ...
            flops = 0.0
            if matmuls and len(heads) >= 2:
                (batch, count, q_length, head_dim), k_length = heads[0], heads[1][2]
                flops = matmuls * 2.0 * batch * count * q_length * k_length * head_dim
            size = lambda v: math.prod(v.aval.shape) * v.aval.dtype.itemsize
            calls.append(KernelCall(name, flops, float(sum(size(v) for v in (*eqn.invars, *eqn.outvars)))))
            continue
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            calls.extend(pallas_kernel_calls(sub))
    return calls


def kernel_seconds(calls: list[KernelCall], peak_flops: float, hbm_bytes_per_second: float) -> float:
    """Each kernel at the chip's roofline (its FLOPs at the bf16 peak or its bytes at the HBM bandwidth, whichever
    is longer), summed: a lower bound of the kernels' time, beside the compiler's estimate of the rest."""
    return sum(max(c.flops / peak_flops, c.bytes / hbm_bytes_per_second) for c in calls)
