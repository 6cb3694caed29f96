"""aot/traffic.py: the per-kernel split of a compiled program's memory traffic, checked against XLA's own total.

An XLA:CPU program (no libtpu needed) whose kernels read and write whole arrays: the parser's operand + result
bytes must equal `cost_analysis()['bytes accessed']` exactly, and the split must put the backward pass's matmul
under "dot / backward" with this file's source line.
"""

import jax
import jax.numpy as jnp
import pytest

from customnet_jax.aot import traffic
from customnet_jax.aot.targets import parse_target


def _loss(w, x):
    return jnp.sum(jnp.tanh(x @ w) ** 2)  # the line the forward matmul comes from


@pytest.fixture(scope="module")
def compiled():
    grad = jax.jit(jax.grad(_loss))
    return grad.lower(jnp.ones((64, 32)), jnp.ones((8, 64))).compile()


def test_total_matches_xla(compiled):
    summary = traffic.summarize(compiled.as_text(), package="tests")
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    assert summary["instructions"] >= 2
    assert summary["total"] == pytest.approx(cost["bytes accessed"], rel=1e-6)


def test_split_by_pass_and_source(compiled):
    summary = traffic.summarize(compiled.as_text(), package="tests")
    kinds = summary["by_kind"]
    # forward: x @ w reads x (8x64) and w (64x32) and writes 8x32, float32
    assert kinds[("dot", "forward")] == (8 * 64 + 64 * 32 + 8 * 32) * 4
    assert kinds[("dot", "backward")] > 0
    line = _loss.__code__.co_firstlineno + 1
    assert any(source.endswith(f"test_aot_traffic.py:{line}") for source in summary["by_source"])


def test_operands_resolved_by_name():
    """Negative control: an instruction whose operands are unknown names moves only its result's bytes."""
    text = ("HloModule m\n\nENTRY %main (a: f32[4]) -> f32[4] {\n"
            "  %a = f32[4]{0} parameter(0)\n"
            "  ROOT %n = f32[4]{0} negate(%a)\n}\n")
    assert traffic.summarize(text)["total"] == 32
    assert traffic.summarize(text.replace("negate(%a)", "negate(%b)"))["total"] == 16


def test_cli_refuses_non_hlo(tmp_path, capsys):
    path = tmp_path / "x.txt"
    path.write_text("not hlo")
    assert traffic.main([str(path)]) == 2
    assert "no ENTRY computation" in capsys.readouterr().err


def test_analytic_count_is_the_same_with_the_splash_kernel():
    """The analytic FLOPs count the products as written whatever kernel runs them: configs/tiny.py's 16 x 16
    latents (256 tokens) go through the Pallas splash kernel when train.attention=splash, whose jaxpr holds one
    block's work (the negative control: counted raw, it is not the model's count)."""
    from flax import nnx

    from customnet_jax.aot import analytic
    from customnet_jax.config_files import load_config, override

    xla = load_config("configs/tiny.py")
    splash = override(xla, ["train.attention=splash"])
    expected = analytic.unet_forward_flops(xla)
    assert expected > 0
    assert analytic.unet_forward_flops(splash) == expected

    graphdef, trainable, frozen = analytic._abstract_params(splash)
    h, c = splash.model.latent_size, splash.model
    x = jax.ShapeDtypeStruct((1, h, h, c.unet.in_channels), jnp.float32)
    context = jax.ShapeDtypeStruct((1, 1 + c.text_encoder.max_length, c.context_dim), jnp.float32)
    raw = jax.make_jaxpr(lambda p, x, t, ctx: nnx.merge(graphdef, p, frozen).unet(x, t, ctx))(
        trainable, x, jax.ShapeDtypeStruct((1,), jnp.int32), context)
    assert "pallas_call" in str(raw.jaxpr)
    assert analytic.matmul_flops(raw.jaxpr) != expected


def test_splash_kernel_work_from_the_jaxpr():
    """The splash kernels of a forward + backward pass of configs/tiny.py (2 samples, 256-token self-attention,
    head_dim padded to 128): one forward, one dq and one dkv kernel per self-attention, 2, 3 and 4 products of
    2 x B x heads x 256 x 256 x 128 FLOPs each; nothing found with jax's attention (the negative control)."""
    from flax import nnx

    from customnet_jax.aot import analytic
    from customnet_jax.config_files import load_config, override

    def calls(config):
        graphdef, trainable, frozen = analytic._abstract_params(config)
        c = config.model
        x = jax.ShapeDtypeStruct((2, c.latent_size, c.latent_size, c.unet.in_channels), jnp.float32)
        context = jax.ShapeDtypeStruct((2, 1 + c.text_encoder.max_length, c.context_dim), jnp.float32)
        loss = lambda p, x, t, ctx: jnp.sum(nnx.merge(graphdef, p, frozen).unet(x, t, ctx))
        jaxpr = jax.make_jaxpr(jax.grad(loss))(trainable, x, jax.ShapeDtypeStruct((2,), jnp.int32), context)
        return analytic.pallas_kernel_calls(jaxpr.jaxpr)

    tiny = load_config("configs/tiny.py")
    assert calls(tiny) == []
    found = calls(override(tiny, ["train.attention=splash"]))
    heads = tiny.model.unet.num_heads
    per_product = 2.0 * 2 * heads * 256 * 256 * 128
    kinds = {"fwd": 2, "dq": 3, "dkv": 4}
    for kind, products in kinds.items():
        of_kind = [c for c in found if f"_{kind}" in c.name]
        assert of_kind, kind
        assert all(c.flops == products * per_product and c.bytes > 0 for c in of_kind)
    assert len({len([c for c in found if f"_{kind}" in c.name]) for kind in kinds}) == 1  # one of each per layer
    assert analytic.kernel_seconds(found, 1e12, 1e15) == pytest.approx(sum(c.flops for c in found) / 1e12)


def test_the_tpu_compilers_kernel_estimates_are_read(compiled):
    """A libtpu-compiled program carries each kernel's estimated cycles: a (256 x 2048) x (2048 x 2048) matmul
    dominates the estimate beside an elementwise op on its result, and a larger matmul takes longer. Negative
    control: the XLA:CPU program (the fixture) has none and the report says so."""
    device = parse_target("v5p-8").devices()[0]
    sharding = jax.sharding.SingleDeviceSharding(device)

    def estimate(rows: int) -> dict:
        x = jax.ShapeDtypeStruct((rows, 2048), jnp.bfloat16, sharding=sharding)
        w = jax.ShapeDtypeStruct((2048, 2048), jnp.bfloat16, sharding=sharding)
        program = jax.jit(lambda x, w: jnp.tanh(x @ w) * 2).lower(x, w).compile()
        return traffic.summarize(program.as_text(), package="tests")

    small, large = estimate(256), estimate(4096)
    assert small["cycles"] > 0 and large["cycles"] > 4 * small["cycles"]
    assert large["slowest"][0].cycles > large["cycles"] / 2
    assert large["cycles_by_kind"][("convolution", "forward")] > large["cycles"] / 2
    report = "\n".join(traffic.report(large))
    assert "the compiler's per-kernel estimates" in report
    cpu = traffic.summarize(compiled.as_text(), package="tests")
    assert cpu["cycles"] == 0 and "no per-kernel estimates" in "\n".join(traffic.report(cpu))
