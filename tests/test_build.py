"""models/build.py patches one private JAX method while building models abstractly (no public switch exists:
see its docstring). Pin what that relies on, so that a JAX or flax upgrade that changes it fails here, not as a
silent 30x slower model construction."""

from flax import nnx
from jax._src.interpreters import partial_eval

from customnet_jax.models.build import abstract_model


def _two_layers() -> nnx.Module:
    return nnx.Sequential(nnx.Linear(4, 4, rngs=nnx.Rngs(0)), nnx.Linear(4, 4, rngs=nnx.Rngs(1)))


def test_abstract_construction_skips_the_tracer_origin_message(monkeypatch):
    original = partial_eval.DynamicJaxprTracer._origin_msg  # the private method build.py replaces
    assert callable(original)
    calls = []

    def spy(self):
        calls.append(type(self).__name__)
        return original(self)

    monkeypatch.setattr(partial_eval.DynamicJaxprTracer, "_origin_msg", spy)
    nnx.eval_shape(_two_layers)
    assert calls, "flax's traced construction no longer builds tracer origin messages: build.py's patch is moot"
    calls.clear()
    model = abstract_model(_two_layers)
    assert calls == []  # skipped while constructing
    assert partial_eval.DynamicJaxprTracer._origin_msg is spy  # and put back afterwards
    assert model.layers[0].kernel.shape == (4, 4)
