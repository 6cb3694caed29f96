"""Build a model abstractly (shapes only, nothing allocated), from given parameters, or freshly initialised.

Never construct a model eagerly: that dispatches and compiles every random initializer (tens of seconds
for a tiny model on a CPU). Build it abstractly and fill in parameters from a checkpoint or from
`customnet_jax.models.init` instead.

flax 0.12.8 + jax 0.10.2: every RNG draw during traced construction compares the tracer's `.sharding`,
which on a tracer raises an AttributeError whose message walks the whole jaxpr built so far
(`_origin_msg`), making construction quadratic (15 s for the full UNet). The message is discarded by
`getattr(..., None)`, so we skip building it while constructing: 0.5 s.
No public API exists for this: JAX builds the message before it could know that nobody reads it, and has no
switch to turn it off, so the private method is patched; tests/test_build.py pins what this relies on (the
method exists and flax's construction reaches it) so that a JAX or flax upgrade that changes it fails there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TypeVar

from flax import nnx
from jax._src.interpreters import partial_eval

from customnet_jax.models.init import initial_params
from customnet_jax.models.params import param_shapes, set_params

M = TypeVar("M")


@contextlib.contextmanager
def _no_tracer_origin_messages() -> Iterator[None]:
    original = partial_eval.DynamicJaxprTracer._origin_msg
    partial_eval.DynamicJaxprTracer._origin_msg = lambda self: ""
    try:
        yield
    finally:
        partial_eval.DynamicJaxprTracer._origin_msg = original


def abstract_model(build: Callable[[], M]) -> M:
    """`nnx.eval_shape(build)`: the model with `jax.ShapeDtypeStruct` parameters, nothing allocated."""
    with _no_tracer_origin_messages():
        return nnx.eval_shape(build)


def model_with_params(build: Callable[[], M], params: dict) -> M:
    """The model of `build` holding `params` (path -> array, every parameter)."""
    model = abstract_model(build)
    set_params(model, params)
    return model


def initialized_model(build: Callable[[], M], seed: int = 0) -> M:
    """The model of `build` with fresh random parameters drawn on the host (customnet_jax.models.init)."""
    shapes = param_shapes(abstract_model(build))
    return model_with_params(build, initial_params(shapes, seed))
