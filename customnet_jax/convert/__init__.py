"""Import released PyTorch checkpoints (CustomNet, Zero-1-to-3, diffusers zero123, CLIP text) into model folders,
safely (no pickle code ever runs) and lazily (one tensor at a time), and export model folders back to PyTorch."""

from customnet_jax.convert.exporters import export_pytorch, schedule_buffers
from customnet_jax.convert.importers import convert_checkpoint, text_kv_params, widen_conv_in
from customnet_jax.convert.layouts import FORMATS, detect_format, open_source
from customnet_jax.convert.readers import (
    CheckpointFormatError,
    LazyTensor,
    UnsafeCheckpointError,
    open_checkpoint,
)

__all__ = ["FORMATS", "CheckpointFormatError", "LazyTensor", "UnsafeCheckpointError", "convert_checkpoint",
           "detect_format", "export_pytorch", "open_checkpoint", "open_source", "schedule_buffers",
           "text_kv_params", "widen_conv_in"]
