"""The model's analytic FLOP count: matmul and convolution multiply-adds (x 2) counted on the jaxpr, per sample.

Independent of any compiler: the reference the compiled count is read against (a compiled train step above
3 x forward + frozen encoders is the recomputation that remat adds; elementwise work is not counted).
"""

from __future__ import annotations

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
