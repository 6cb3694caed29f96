"""CustomNet's conditioning: what the model is given besides the noise, one module per job.

  view.py      the relative viewpoint T (from degrees or from two cameras)
  images.py    pictures in and out: loading, resizing (torch's kernels), CLIP preprocessing, float <-> uint8
  boxes.py     the bbox on the canvas, stored boxes -> pixels, a mask's box, the enlarged training square
  canvas.py    the location canvas and the background canvas (one implementation: data pipeline and sampler)
  objects.py   the object picture: cropped to its mask, fitted, centred on white
  matting.py   the object's mask in a photo (alpha, white, GrabCut, SAM, auto)
  batch.py     the training batch: keys, shapes, dtypes of its raw and precomputed forms
  features.py  the frozen part of the train step: a batch -> latents and embeddings with condition dropout

The names most callers need are re-exported here (`from customnet_jax import conditioning`).
"""

from customnet_jax.conditioning.boxes import box_pixels, clip_box, mask_box, parse_bbox
from customnet_jax.conditioning.canvas import background_canvas, location_canvas
from customnet_jax.conditioning.images import (
    CLIP_MEAN,
    CLIP_STD,
    RESIZE_METHODS,
    bilinear_resize,
    check_image,
    clip_preprocess,
    load_rgb,
    resize,
    resize_matrix,
    to_float,
    to_uint8,
)
from customnet_jax.conditioning.objects import object_on_white
from customnet_jax.conditioning.view import view_from_cameras, view_from_degrees

__all__ = ["CLIP_MEAN", "CLIP_STD", "RESIZE_METHODS", "background_canvas", "bilinear_resize", "box_pixels",
           "check_image", "clip_box", "clip_preprocess", "load_rgb", "location_canvas", "mask_box",
           "object_on_white", "parse_bbox", "resize", "resize_matrix", "to_float", "to_uint8", "view_from_cameras",
           "view_from_degrees"]
