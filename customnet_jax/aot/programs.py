"""The project's own programs, lowered for abstract devices: nothing is allocated, nothing runs.

  train:    `train.step.jit_step(make_step_fn(...))` with the state, frozen encoders and batch as
            ShapeDtypeStructs carrying the sharding rules of `train/sharding.py` (as `train.loop.setup` builds them);
  sample:   the sampling Pipeline's one compiled program (all DDIM steps, guidance batched) on one chip, and the
            guided UNet call of one step (a loop's cost is not always estimated: see aot/report.py);
  encoders: the precompute encoders (`data.precomputed.make_encoder`'s program) on one chip.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from customnet_jax.aot import analytic
from customnet_jax.data.precomputed import make_encoder
from customnet_jax.diffusion import samplers
from customnet_jax.models import layers
from customnet_jax.models.build import abstract_model
from customnet_jax.sampling.pipeline import Pipeline
from customnet_jax.train import sharding as shd
from customnet_jax.train import state as st
from customnet_jax.train import synthetic
from customnet_jax.train.optimizer import make_optimizer
from customnet_jax.train.step import abstract_batch, jit_step, make_step_fn


def batch_form(config: Any) -> str:
    return "precomputed" if config.data.source == "precomputed" else "raw"


def host_batch(config: Any, form: str) -> dict:
    """The data pipeline's batch (keys, per-sample shapes, dtypes) for the global batch, as broadcast views of one
    example of the synthetic source (which writes the pipeline's batch format)."""
    example = dict(synthetic._example(config, 0, form), **synthetic._flags(config, 0))
    batch = config.train.batch_size
    return {k: np.broadcast_to(np.asarray(v), (batch, *np.shape(v))) for k, v in example.items()}


def with_shardings(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings)


def _lower(jitted: Any, *args: Any) -> tuple[Any, list[analytic.KernelCall]]:
    """(the lowered program, the Pallas kernel calls in its jaxpr: work the compiler's cost analysis leaves out)."""
    traced = jitted.trace(*args)
    return traced.lower(), analytic.pallas_kernel_calls(traced.jaxpr.jaxpr)


def abstract_train_state(config: Any) -> tuple[nnx.GraphDef, Any, dict, dict]:
    """(graphdef, optimizer, train state, frozen) of `config` as ShapeDtypeStructs, as `train.loop.setup` builds
    them."""
    graphdef, shapes = st.graphdef_and_shapes(config)
    flat = {path: jax.ShapeDtypeStruct(shape, jnp.float32) for path, shape in shapes.items()}
    trainable, frozen_params = st.split_params(flat)
    frozen = {"params": frozen_params}
    if not config.model.is_zero123:
        frozen["null_text"] = jax.ShapeDtypeStruct((1, config.model.text_encoder.max_length,
                                                    config.model.context_dim), jnp.float32)
    tx = make_optimizer(config.train, trainable)
    state = jax.eval_shape(lambda p: st.new_state(p, tx, config.train.seed, ema=config.train.ema_decay > 0),
                           trainable)
    return graphdef, tx, state, frozen


def lower_train_step(config: Any, mesh: Mesh, form: str) -> tuple[Any, dict, list[analytic.KernelCall]]:
    """The real train step lowered for `mesh`'s devices; returns (lowered, host batch, Pallas kernel calls, one
    device's)."""
    graphdef, tx, state, frozen = abstract_train_state(config)
    min_size = config.mesh.fsdp_min_size
    state_shardings = shd.tree_shardings(mesh, state, min_size)
    frozen_shardings = shd.tree_shardings(mesh, frozen, min_size)
    batch = host_batch(config, form)
    batch_shardings = {k: shd.batch_sharding(mesh) for k in batch}
    jitted = jit_step(make_step_fn(config, graphdef, tx, mesh), state_shardings, frozen_shardings, batch_shardings,
                      mesh)
    lowered, kernels = _lower(jitted, with_shardings(state, state_shardings),
                              with_shardings(frozen, frozen_shardings), abstract_batch(batch, mesh))
    return lowered, batch, kernels


def one_chip(device: Any) -> Mesh:
    """A 1 x 1 (data, fsdp) mesh of one abstract device: the sampling programs' placement."""
    return Mesh(np.array([device]).reshape(1, 1), shd.AXES, axis_types=(jax.sharding.AxisType.Auto,) * 2)


def _abstract_pipeline(config: Any) -> Pipeline:
    """The Pipeline around an abstract model (train.compute_dtype, for compute and weights as sample.py runs it,
    and train.attention of the config)."""
    attention = config.train.attention or None
    model = abstract_model(st.model_builder(config.model, config.train.compute_dtype, False, attention))
    return Pipeline(model, config.diffusion, weights_dtype=jnp.dtype(config.train.compute_dtype))


def _placed(tree: Any, mesh: Mesh) -> Any:
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=sharding), tree)


def lower_sampling(config: Any, mesh: Mesh, num_samples: int, steps: int,
                   sampler: str = "ddim") -> tuple[Any, Any, list[analytic.KernelCall]]:
    """(the whole sampling program, one guided UNet step, that step's Pallas kernel calls) for `num_samples`
    pictures of one view, guidance on."""
    pipeline = _abstract_pipeline(config)
    c = pipeline.config
    r, h = c.resolution, c.latent_size
    _, plan, _ = samplers.make_schedule(sampler, config.diffusion, steps)  # the sampler's default options
    f32 = jnp.float32
    image = jax.ShapeDtypeStruct((1, r, r, 3), f32)
    args = (pipeline.state, image, image, image, jax.ShapeDtypeStruct((1, 4), f32),
            jax.ShapeDtypeStruct((2, 1 if c.is_zero123 else c.text_encoder.max_length), jnp.int32),
            jax.ShapeDtypeStruct((num_samples, h, h, c.latent_channels), f32),
            jax.eval_shape(lambda: jax.random.key(0)), None, jax.ShapeDtypeStruct((3,), f32), plan)
    with layers.under_mesh(mesh):
        whole = pipeline._generate.lower(*_placed(args, mesh), sampler_name=sampler, guidance_terms=("all",),
                                         progress=False)
        graphdef = pipeline.graphdef
        tokens = c.unet.object_tokens + (0 if c.is_zero123 else c.text_encoder.max_length)
        x = jax.ShapeDtypeStruct((2 * num_samples, h, h, c.latent_channels), f32)
        conditions = jax.ShapeDtypeStruct((2 * num_samples, h, h, c.unet.in_channels - c.latent_channels), f32)
        context = jax.ShapeDtypeStruct((2 * num_samples, tokens, c.context_dim), f32)
        t = jax.ShapeDtypeStruct((2 * num_samples,), jnp.int32)
        step = jax.jit(lambda state, x, t, cond, ctx: nnx.merge(graphdef, state).denoise(x, t, cond, ctx))
        one_step, kernels = _lower(step, *_placed((pipeline.state, x, t, conditions, context), mesh))
    return whole, one_step, kernels


def lower_encoders(config: Any, mesh: Mesh, batch_size: int) -> Any:
    """The precompute encoders' program (VAE posteriors of target / location / background, CLIP embeddings)."""
    pipeline = _abstract_pipeline(config)
    model = nnx.merge(pipeline.graphdef, pipeline.state)
    run = make_encoder(model, batch_size)
    r = config.model.resolution
    image = jax.ShapeDtypeStruct((batch_size, r, r, 3), jnp.float32)
    tokens = jax.ShapeDtypeStruct((batch_size, 77), jnp.int32)
    with layers.under_mesh(mesh):
        return run.program.lower(*_placed((pipeline.state, image, image, image, image, tokens), mesh))

