"""Pallas splash attention (the TPU kernel of `jax.experimental.pallas.ops.tpu`) behind `layers.attention`.

The kernel works on one device's (heads, T, head_dim) blocks, so it runs under `shard_map` over the mesh the
caller runs under (`layers.under_mesh`): the batch is split over every mesh axis, as the train step's batch is;
without a mesh (one device) it is called directly. On anything but a TPU it runs in Pallas' interpret mode
(slow, for checking numerics on a CPU).

What the kernel takes, and what is done here to fit it:
  - head_dim a multiple of 128 (TPU lanes): q and k are zero-padded (q.k unchanged) and v too (the extra output
    columns are zero and cut off); the UNet's 40 / 80 / 160-wide heads become 128 / 128 / 256;
  - no softmax scale: q is multiplied by head_dim^-0.5 (of the real head_dim) first;
  - sequences that the 128-token blocks divide (q and k alike); other shapes (cross-attention to the 77 text
    tokens, CLIP's 77 / 257 tokens, the UNet's 8 x 8 and 4 x 4 levels) return None and the caller falls
    back to jax's attention, where those small products are cheap.

`splash_self_attention` takes the projection weights instead of q / k / v, and folds the padding and the
head-major layout into them: the UNet's self-attention (`unet.Attention`) goes this way, which moves ~17 % fewer
bytes per 1024-token transformer block by the TPU compiler's count (docs/tpu.md).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib
from jax.sharding import PartitionSpec as P

LANES = 128  # head_dim granularity and the smallest block
BLOCKS = (512, 256, 128)  # the largest that divides the sequence is used


def _block(length: int) -> int | None:
    return next((b for b in BLOCKS if length % b == 0), None)


def supported(q_length: int, k_length: int) -> bool:
    """Whether the kernel takes these sequence lengths (else `layers.attention` uses jax's attention)."""
    return _block(q_length) is not None and _block(k_length) is not None


def _kernel(heads: int, q_length: int, k_length: int, causal: bool, interpret: bool):
    """The splash kernel for one device's (heads, T, D). Built in each trace: it holds arrays (the mask's block
    tables), which must not outlive the trace that made them."""
    mask_type = mask_lib.CausalMask if causal else mask_lib.FullMask
    mask = mask_lib.MultiHeadMask([mask_type((q_length, k_length)) for _ in range(heads)])
    bq, bk = _block(q_length), _block(k_length)
    sizes = kernel_lib.BlockSizes(block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
                                  block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
    return kernel_lib.make_splash_mha(mask, block_sizes=sizes, head_shards=1, q_seq_shards=1, interpret=interpret)


def _platform(mesh) -> str:
    device = getattr(mesh, "abstract_device", None) if not mesh.empty else None
    return device.platform if device is not None else jax.default_backend()


def _run(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, causal: bool) -> jax.Array:
    """The kernel on (B, heads, T, padded) q (already scaled), k, v -> (B, heads, Tq, padded), per device."""
    mesh = jax.sharding.get_abstract_mesh()
    kernel = _kernel(heads, q.shape[2], k.shape[2], causal, interpret=_platform(mesh) != "tpu")
    run = jax.vmap(kernel)
    if not mesh.empty:
        spec = P(tuple(mesh.axis_names))
        run = jax.shard_map(run, in_specs=spec, out_specs=spec, check_vma=False)
    return run(q, k, v)


def _takes(batch: int, q_length: int, k_length: int) -> bool:
    mesh = jax.sharding.get_abstract_mesh()
    return supported(q_length, k_length) and batch % (1 if mesh.empty else mesh.size) == 0


def _padded(head_dim: int) -> int:
    return -(-head_dim // LANES) * LANES


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, *,
                     causal: bool = False) -> jax.Array | None:
    """(B, Tq, C), (B, Tk, C) x 2 -> (B, Tq, C), or None when the kernel does not take these shapes."""
    (batch, q_length, channels), k_length = q.shape, k.shape[1]
    if not _takes(batch, q_length, k_length):
        return None
    head_dim = channels // heads
    padded = _padded(head_dim)

    def to_heads(x: jax.Array, scale: float = 1.0) -> jax.Array:  # (B, T, C) -> (B, heads, T, padded)
        x = (x * scale).reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(0, 2, 1, 3)
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, padded - head_dim)))

    out = _run(to_heads(q, head_dim**-0.5), to_heads(k), to_heads(v), heads, causal)  # (B, heads, Tq, padded)
    return out[..., :head_dim].transpose(0, 2, 1, 3).reshape(batch, q_length, channels).astype(q.dtype)


def splash_self_attention(x: jax.Array, heads: int, q_kernel: jax.Array, k_kernel: jax.Array, v_kernel: jax.Array,
                          out_kernel: jax.Array, dtype) -> jax.Array | None:
    """Self-attention with its projections folded around the kernel: x (B, T, C) -> to_out(attention) without
    to_out's bias, or None when the kernel does not take this shape.

    The q / k / v weights (C, C) are laid out as (C, heads, padded) (zero columns; q's scaled by head_dim^-0.5)
    and to_out's as (heads, padded, C) (zero rows), so the projections write and read the kernel's padded
    head-major (B, heads, T, padded) layout themselves: no pad, transpose or slice of activations in between
    (the same products: zero columns give zero q.k terms and zero outputs, which meet zero rows). The zeros are
    appended by a product with a (head_dim, padded) identity, not `jnp.pad`: the pad's gradient (a slice of the
    weight gradient) next to the FSDP reduce-scatter makes libtpu 0.0.42.1 fail with an internal error
    (tests/test_aot.py; docs/tpu.md).
    """
    batch, length, channels = x.shape
    if not _takes(batch, length, length):
        return None
    head_dim = channels // heads
    padded = _padded(head_dim)

    widen = jnp.eye(head_dim, padded, dtype=dtype)  # (head_dim, padded): zero columns appended by a product

    def project(kernel: jax.Array, scale: float = 1.0) -> jax.Array:  # (C, C) -> (B, heads, T, padded)
        kernel = (kernel.astype(jnp.float32) * scale).astype(dtype).reshape(kernel.shape[0], heads, head_dim)
        return jnp.einsum("btc,chd->bhtd", x, jnp.einsum("chd,de->che", kernel, widen))

    x = x.astype(dtype)
    out = _run(project(q_kernel, head_dim**-0.5), project(k_kernel), project(v_kernel), heads, False)
    out_kernel = jnp.einsum("de,hdc->hec", widen, out_kernel.reshape(heads, head_dim, channels).astype(dtype))
    return jnp.einsum("bhtd,hdc->btc", out.astype(dtype), out_kernel)  # (B, T, C)
