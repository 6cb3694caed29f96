"""Pallas splash attention (the TPU kernel of `jax.experimental.pallas.ops.tpu`) behind `layers.attention`.

The kernel works on one device's (heads, T, head_dim) blocks, so it runs under `shard_map` over the mesh the
caller runs under (`layers.under_mesh`): the batch is split over every mesh axis, as the train step's batch is;
without a mesh (one device) it is called directly. On anything but a TPU it runs in Pallas' interpret mode
(slow, for checking numerics on a CPU).

What the kernel takes, and what is done here to fit it:
  - head_dim a multiple of 128 (TPU lanes): q and k are zero-padded (q.k unchanged) and v too (the extra output
    columns are zero and cut off); the UNet's 40 / 80 / 160-wide heads become 128 / 128 / 256;
  - no softmax scale: q is multiplied by head_dim^-0.5 (of the real head_dim) first;
  - sequences that the 128-token blocks divide (q and k alike); other shapes (cross-attention to the 1 + 77
    context tokens, CLIP's 77 / 257 tokens, the UNet's 8 x 8 and 4 x 4 levels) return None and the caller falls
    back to jax's attention, where those small products are cheap.
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


def splash_attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, *,
                     causal: bool = False) -> jax.Array | None:
    """(B, Tq, C), (B, Tk, C) x 2 -> (B, Tq, C), or None when the kernel does not take these shapes."""
    (batch, q_length, channels), k_length = q.shape, k.shape[1]
    mesh = jax.sharding.get_abstract_mesh()
    shards = 1 if mesh.empty else mesh.size
    if not supported(q_length, k_length) or batch % shards:
        return None
    head_dim = channels // heads
    padded = -(-head_dim // LANES) * LANES

    def to_heads(x: jax.Array, scale: float = 1.0) -> jax.Array:  # (B, T, C) -> (B, heads, T, padded)
        x = (x * scale).reshape(x.shape[0], x.shape[1], heads, head_dim).transpose(0, 2, 1, 3)
        return jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, padded - head_dim)))

    kernel = _kernel(heads, q_length, k_length, causal, interpret=_platform(mesh) != "tpu")
    run = jax.vmap(kernel)
    if not mesh.empty:
        spec = P(tuple(mesh.axis_names))
        run = jax.shard_map(run, in_specs=spec, out_specs=spec, check_vma=False)
    out = run(to_heads(q, head_dim**-0.5), to_heads(k), to_heads(v))  # (B, heads, Tq, padded)
    return out[..., :head_dim].transpose(0, 2, 1, 3).reshape(batch, q_length, channels).astype(q.dtype)

