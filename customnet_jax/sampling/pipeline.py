"""CustomNet inference: object picture + box + viewpoint(s) + prompt or background -> pictures.

Host side: load and check the inputs, build the location canvas and the background canvas, tokenize.
Device side, one compiled program per input shape: CLIP-encode the object once, one object token per view
(cc_projection), VAE-encode the canvases, the whole sampler loop (diffusion/samplers: DDIM by default) as a
`lax.scan` with the conditional and unconditional passes batched together, and the VAE decode. One program is
compiled per (sampler, steps, input shapes).

Guidance (docs/model.md §7): e = e_u + g (e_c - e_u) [+ g_image (e_image - e_u)] [+ g_text (e_text - e_u)], with
  unconditional = zero object latent, zero object token (after cc_projection), text "" (background kept);
  image-only = the object conditions with text "";  text-only = the text with the object conditions zeroed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm import tqdm

from customnet_jax import conditioning
from customnet_jax.diffusion import samplers
from customnet_jax.diffusion.schedule import DiffusionConfig, alphas_cumprod
from customnet_jax.model_folder import ModelFolder, load_model
from customnet_jax.models.customnet import CustomNet
from customnet_jax.text import load_tokenizer, tokenize

DEFAULT_OBJECT_FRACTION = 200 / 256  # the original demo fits the object to ~200 px of the 256 canvas


@dataclasses.dataclass(frozen=True)
class Result:
    images: np.ndarray  # uint8 (V, N, R, R, 3): one row per view, one column per sample
    latents: np.ndarray  # float32 (V, N, h, w, c)
    object_image: np.ndarray  # float32 (R, R, 3) in [-1, 1], the prepared object
    location: np.ndarray  # float32 (R, R, 3), the location canvas the model saw
    settings: dict[str, Any]  # everything needed to make the same pictures again


def parse_views(views: Sequence[Sequence[float]]) -> np.ndarray:
    """[(polar, azimuth, radius), ...] in degrees (radius a distance delta) -> T (V, 4)."""
    views = np.asarray(views, np.float64)
    if views.ndim != 2 or views.shape[1] != 3 or len(views) == 0:
        raise ValueError(f"views must be a list of (polar, azimuth, radius) triples, got shape {views.shape}")
    if not np.isfinite(views).all():
        raise ValueError("views contain non-finite values")
    return conditioning.view_from_degrees(views[:, 0], views[:, 1], views[:, 2])


class Pipeline:
    """A CustomNet (or Zero-1-to-3) model ready to sample. Build with `Pipeline.from_folder(path)`."""

    def __init__(self, model: CustomNet, diffusion: DiffusionConfig | None = None, folder: ModelFolder | None = None,
                 tokenizer_path: str | pathlib.Path | None = None, sampler: str = samplers.DEFAULT,
                 sampler_options: Mapping[str, Any] | None = None, weights_dtype: Any = None):
        self.config = model.config
        self.folder = folder
        self.diffusion = diffusion or DiffusionConfig()
        self.alphas_cumprod = alphas_cumprod(self.diffusion)
        self.tokenizer = None if self.config.is_zero123 else load_tokenizer(tokenizer_path)
        self.graphdef, state = nnx.split(model)
        self.state = state if weights_dtype is None else cast_weights(state, weights_dtype)
        self.sampler, self.sampler_options = sampler, dict(sampler_options or {})  # used when a call names none
        self._progress = None
        self._generate = jax.jit(self._generate_program,
                                 static_argnames=("sampler_name", "guidance_terms", "progress"))

    @classmethod
    def from_folder(cls, path: str | pathlib.Path, dtype: Any = jnp.float32, attention: str | None = None,
                    adapt: Callable[[CustomNet], CustomNet] | None = None) -> Pipeline:
        """The model of a folder, computing in `dtype` with its weights stored in `dtype` too (bf16: half the
        bytes each sampling step reads). `adapt` changes the loaded model while its weights are still float32
        (LoRA adapters, whose base hash is over the float32 weights: `adapters.apply_adapters`)."""
        model, folder = load_model(path, dtype=dtype, attention=attention)
        if adapt is not None:
            model = adapt(model)
        return cls(model, folder.diffusion, folder, folder.tokenizer_path, weights_dtype=dtype)

    # ------------------------------------------------------------------------------------------ host side

    def prepare_object(self, object_image: Any, mask: Any = None) -> np.ndarray:
        """A picture (path, PIL, uint8 array; RGBA alpha or RGB on white, optional mask) -> (R, R, 3) in [-1, 1].

        A float array (R, R, 3) in [-1, 1] is taken as already prepared (object centred on white).
        """
        size = self.config.resolution
        if isinstance(object_image, np.ndarray) and object_image.dtype.kind == "f":
            image = conditioning.check_image(object_image, "object image")
            if image.shape[:2] != (size, size):
                raise ValueError(f"a prepared object image must be {size}x{size}, got {image.shape[:2]}; "
                                 "pass the picture itself (path or PIL) to have it cropped and fitted")
            return image
        return conditioning.object_on_white(object_image, mask, canvas=size,
                                            object_size=max(1, round(DEFAULT_OBJECT_FRACTION * size)))

    def _background(self, background: Any, bbox: tuple[int, int, int, int]) -> np.ndarray:
        size = self.config.resolution
        if background is None:
            if self.config.has_background:
                raise ValueError("this composition model needs a background picture (--background)")
            return np.ones((size, size, 3), np.float32)  # unused by a model without background channels
        if not self.config.has_background:
            raise ValueError("this model has no background channels: a background picture needs the composition "
                             "model (customnet_inpaint); give a prompt instead")
        image = background if isinstance(background, np.ndarray) and background.dtype.kind == "f" \
            else conditioning.load_rgb(background)
        return conditioning.background_canvas(image, bbox, size)

    def __call__(self, object_image: Any, *, bbox: Sequence[float] | None = None,
                 views: Sequence[Sequence[float]] = ((0.0, 0.0, 0.0),), prompt: str = "", background: Any = None,
                 mask: Any = None, num_samples: int = 1, seed: int = 0, steps: int = 50, guidance: float = 3.0,
                 image_guidance: float = 0.0, text_guidance: float = 0.0, sampler: str | None = None,
                 sampler_options: Mapping[str, Any] | None = None, noises: np.ndarray | None = None,
                 progress: bool = True) -> Result:
        """Sample `num_samples` pictures for each view. The same seed gives the same initial noise for every
        view, so a multi-view sheet shows one object turning. `sampler` names one of `samplers.names()` (default:
        the pipeline's `sampler` and `sampler_options`); `sampler_options` are its own (None or missing: its
        default, e.g. DDIM's grid "trailing" for a zero-terminal-SNR model, else "correct"); an option it does
        not take is refused. `noises` (S, V*N, h, w, c) replaces a stochastic sampler's draws (reference tests)."""
        c = self.config
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not np.isfinite([guidance, image_guidance, text_guidance]).all():
            raise ValueError("guidance scales must be finite numbers")
        if c.is_zero123 and (prompt or text_guidance or bbox is not None or background is not None):
            raise ValueError("a Zero-1-to-3 model takes only the object and the viewpoint: no prompt, box or "
                             "background")
        if sampler is None:
            sampler, sampler_options = self.sampler, {**self.sampler_options, **(sampler_options or {})}
        # checks the name, steps and options before anything is compiled
        _, plan, options = samplers.make_schedule(sampler, self.diffusion, steps, sampler_options)
        box, obj, location, background_canvas, view_vectors, tokens = self.host_inputs(
            object_image, bbox, views, prompt, background, mask)
        latent_shape = (num_samples, c.latent_size, c.latent_size, c.latent_channels)
        key = jax.random.key(seed)
        x_T = jax.random.normal(jax.random.fold_in(key, 0), latent_shape, jnp.float32)
        terms = ("all",) + (("image",) if image_guidance else ()) + (("text",) if text_guidance else ())
        scales = jnp.asarray([guidance, image_guidance, text_guidance], jnp.float32)
        started = time.time()
        with self._progress_bar(plan.num_steps, progress, sampler):
            images, latents = self._generate(
                self.state, jnp.asarray(obj[None]), jnp.asarray(location[None]), jnp.asarray(background_canvas[None]),
                jnp.asarray(view_vectors), jnp.asarray(tokens), x_T, jax.random.fold_in(key, 1),
                None if noises is None else jnp.asarray(noises, jnp.float32), scales, plan,
                sampler_name=sampler, guidance_terms=terms, progress=progress)
            images = np.asarray(images)
        views_count = len(view_vectors)
        images = np.rint(images * 255).astype(np.uint8).reshape(views_count, num_samples, *images.shape[1:])
        settings = {
            "prompt": prompt, "bbox": list(box), "views": np.asarray(views, float).tolist(),
            "num_samples": num_samples, "seed": seed, "steps": steps, "guidance": guidance,
            "image_guidance": image_guidance, "text_guidance": text_guidance,
            "sampler": sampler, "sampler_options": options,
            "background": background is not None, "resolution": c.resolution,
            "seconds": round(time.time() - started, 3),
            "model": None if self.folder is None else {"path": str(self.folder.path), **self.folder.provenance},
        }
        return Result(images, np.asarray(latents).reshape(views_count, num_samples, *latents.shape[1:]), obj,
                      location, settings)

    def host_inputs(self, object_image: Any, bbox: Sequence[float] | None, views: Sequence[Sequence[float]],
                    prompt: str, background: Any, mask: Any) -> tuple:
        """The checked inputs as the device program takes them: (box, object, location canvas, background
        canvas, view vectors (V, 4), tokens of [prompt, ""])."""
        c = self.config
        box = conditioning.parse_bbox(bbox if bbox is not None else (0, 0, c.resolution, c.resolution),
                                      c.resolution)
        obj = self.prepare_object(object_image, mask)
        location = conditioning.location_canvas(obj, box, c.resolution)
        background_canvas = self._background(background, box)
        tokens = np.zeros((2, 1), np.int32)
        if not c.is_zero123:
            tokens = tokenize(self.tokenizer, [prompt, ""], c.text_encoder.max_length)
        return box, obj, location, background_canvas, parse_views(views), tokens

    # -------------------------------------------------------------------------------------- device program

    def _on_step(self, index: Any) -> None:
        if self._progress is not None:
            self._progress.update(1)

    @contextlib.contextmanager
    def _progress_bar(self, total: int, enabled: bool, name: str):
        """A tqdm bar advanced from inside the compiled loop (a host callback per step). The callback makes
        the program uncacheable across processes (JAX's persistent cache), so it is compiled in only when
        progress is shown."""
        if enabled:
            self._progress = tqdm(total=total, desc=name, unit="step", leave=False)
        try:
            yield
        finally:
            if self._progress is not None:
                self._progress.close()
            self._progress = None

    def _generate_program(self, state, object_image, location, background, views, tokens, x_T, key, noises,
                          scales, plan, *, sampler_name, guidance_terms, progress):
        model = nnx.merge(self.graphdef, state)
        num_views = views.shape[0]
        conditions, context, names = self.guidance_inputs(model, object_image, location, background, views, tokens,
                                                          x_T.shape[0], guidance_terms)
        model_fn = guided_model_fn(model, conditions, context, names, scales)
        latents = samplers.get(sampler_name).sample(model_fn, jnp.tile(x_T, (num_views, 1, 1, 1)), plan, key, noises,
                                                    on_step=self._on_step if progress else None)
        images = jnp.clip((model.decode(latents) + 1) / 2, 0, 1)
        return images, latents

    def guidance_inputs(self, model: CustomNet, object_image: jax.Array, location: jax.Array, background: jax.Array,
                        views: jax.Array, tokens: jax.Array, num_samples: int,
                        guidance_terms: tuple[str, ...]) -> tuple[jax.Array, jax.Array, tuple[str, ...]]:
        """The UNet's conditions and context for every guidance group, stacked: (conditions, context, names)."""
        c = self.config
        num_views = views.shape[0]
        batch = num_views * num_samples
        per_view = lambda a: jnp.repeat(a, num_samples, axis=0)  # (V, ...) -> (V*N, ...)
        everywhere = lambda a: jnp.broadcast_to(a, (batch, *a.shape[1:]))  # (1, ...) -> (V*N, ...)

        embedding = model.image_embedding(object_image)  # (1, D)
        object_token = per_view(model.project_object(jnp.repeat(embedding, num_views, 0), views))  # (B, 1, D)
        null_token = jnp.zeros_like(object_token)
        object_latent = everywhere(model.encode(location)[0])  # posterior mode, unscaled (B, h, w, c)
        null_latent = jnp.zeros_like(object_latent)
        if c.has_background:
            background_latent = everywhere(model.encode(background)[0])
            conditions = lambda obj: jnp.concatenate([obj, background_latent], axis=-1)
        else:
            conditions = lambda obj: obj
        if c.is_zero123:
            text = null_text = None
        else:
            text_embeddings = model.encode_text(tokens)  # (2, 77, D): prompt, ""
            text, null_text = everywhere(text_embeddings[:1]), everywhere(text_embeddings[1:])

        groups = {  # name -> (conditions, context)
            "cond": (conditions(object_latent), model.context(object_token, text)),
            "uncond": (conditions(null_latent), model.context(null_token, null_text)),
        }
        if "image" in guidance_terms:
            groups["image"] = (conditions(object_latent), model.context(object_token, null_text))
        if "text" in guidance_terms:
            groups["text"] = (conditions(null_latent), model.context(null_token, text))
        names = tuple(groups)
        return (jnp.concatenate([groups[n][0] for n in names]), jnp.concatenate([groups[n][1] for n in names]),
                names)


def cast_weights(state: Any, dtype: Any) -> Any:
    """Every floating weight matrix and convolution kernel (ndim >= 2) in `dtype`; vectors (biases, norm scales)
    and non-float state kept. The layers cast their weights to the compute dtype at each call anyway, so with
    `dtype` = the compute dtype the products are the same and the program reads half the bytes (bf16 sampling is
    bound by reading the weights at small batches; benchmarks/RESULTS.md). Works on arrays and on
    ShapeDtypeStructs (ahead-of-time compiles)."""

    def cast(leaf: Any) -> Any:
        if np.ndim(leaf) < 2 or not jnp.issubdtype(leaf.dtype, jnp.floating) or leaf.dtype == dtype:
            return leaf
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct(leaf.shape, dtype, sharding=leaf.sharding)
        return leaf.astype(dtype)

    return jax.tree.map(cast, state)


def guided_model_fn(model: CustomNet, conditions: jax.Array, context: jax.Array, names: tuple[str, ...],
                    scales: jax.Array) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """model_fn(x, timesteps) for a sampler: all guidance groups in one batched UNet call, combined as
    e_u + g (e_c - e_u) [+ g_image (e_image - e_u)] [+ g_text (e_text - e_u)] (eps or v: guidance is linear in
    either)."""

    def model_fn(x, t):
        out = model.denoise(jnp.tile(x, (len(names), 1, 1, 1)), jnp.tile(t, len(names)), conditions, context)
        outputs = dict(zip(names, jnp.split(out, len(names)), strict=True))
        guided = outputs["uncond"] + scales[0] * (outputs["cond"] - outputs["uncond"])
        if "image" in outputs:
            guided = guided + scales[1] * (outputs["image"] - outputs["uncond"])
        if "text" in outputs:
            guided = guided + scales[2] * (outputs["text"] - outputs["uncond"])
        return guided

    return model_fn
