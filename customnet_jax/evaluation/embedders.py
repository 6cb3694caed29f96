"""Image and text embeddings for the paper's metrics: DINO (ViT / DINOv2) and CLIP, transformers' PyTorch models.

Both load from a local folder the user supplies (`save_pretrained` layout: config.json + weights, and
preprocessor_config.json for the image preprocessing); nothing is downloaded (`local_files_only=True`).

- DINO embedding = the CLS token of `last_hidden_state` (after the final LayerNorm): the DINO paper's image
  representation (its k-NN / linear evaluations use the normalised CLS output of the backbone), and what
  DreamBooth's DINO score uses. NOT `pooler_output`: for `ViTModel` that is an extra tanh dense layer that DINO
  checkpoints do not have (transformers initialises it at random); for `Dinov2Model` it equals the CLS token.
- CLIP image embedding = `visual_projection(vision_model(pixels).pooler_output)` (= `CLIPModel`'s
  `image_embeds`); CLIP text embedding = `text_projection(text_model(ids).pooler_output)` (the end-of-text
  token), tokens truncated to the model's `max_position_embeddings` (77 for OpenAI CLIP).
- Preprocessing: the folder's image processor (`AutoImageProcessor`) when it has a preprocessor_config.json;
  otherwise the standard one written out here: DINO = resize the shorter side to size*256/224 (bicubic),
  centre crop, ImageNet mean/std; CLIP = resize the shorter side to size (bicubic), centre crop, CLIP mean/std.
- Tokenizer: the CLIP folder's own (`AutoTokenizer`) if it has tokenizer files, else the shipped OpenAI CLIP
  BPE (customnet_jax/assets/clip_tokenizer).

PyTorch is needed here only (install the `eval` extra: `pip install -e '.[eval]'`).
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from PIL import Image

from customnet_jax.local_models import local_folder
from customnet_jax.text import load_tokenizer

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "tokenizer_config.json")


def require_torch() -> Any:
    """Import torch, or fail with the install command."""
    try:
        import torch  # optional dependency (the eval extra): only the embedding metrics need it
    except ImportError as error:
        raise ImportError("the DINO-I / CLIP-I / CLIP-T metrics run transformers' PyTorch models and need torch: "
                          "pip install torch==2.13.0 (or pip install -e '.[eval]')") from error
    return torch


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports, progress bars and backend notices while loading (errors still raise)."""
    from transformers.utils import logging  # transformers (seconds to import): only when a model loads

    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def _default_device(device: str | None) -> str:
    torch = require_torch()
    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def to_pil(image: Any) -> Image.Image:
    """uint8 (H, W, 3) array or PIL image -> RGB PIL image."""
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) images, got {array.dtype} {array.shape}")
    return Image.fromarray(array)


def standard_preprocess(images: Sequence[Any], size: int, resize_to: int, mean: Sequence[float],
                        std: Sequence[float]) -> np.ndarray:
    """Resize the shorter side to `resize_to` (PIL bicubic), centre crop size x size, normalise -> (B, 3, S, S)."""
    out = []
    for image in images:
        pil = to_pil(image)
        w, h = pil.size
        scale = resize_to / min(w, h)
        pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.Resampling.BICUBIC)
        w, h = pil.size
        left, top = (w - size) // 2, (h - size) // 2
        x = np.asarray(pil.crop((left, top, left + size, top + size)), np.float32) / 255
        out.append(((x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)).transpose(2, 0, 1))
    return np.stack(out)


class ImageEmbedder(Protocol):
    """Anything that maps uint8 (H, W, 3) pictures to embeddings (B, D)."""

    def embed_images(self, images: Sequence[Any]) -> np.ndarray: ...


class _TorchEmbedder:
    folder: pathlib.Path
    processor: Any
    device: str
    batch_size: int

    def _pixels(self, images: Sequence[Any]) -> Any:
        torch = require_torch()
        if self.processor is not None:
            pixels = self.processor(images=[to_pil(i) for i in images], return_tensors="pt")["pixel_values"]
        else:
            pixels = torch.from_numpy(self._standard(images))
        return pixels.to(self.device, torch.float32)

    def _standard(self, images: Sequence[Any]) -> np.ndarray:
        raise NotImplementedError

    def _image_features(self, pixels: Any) -> Any:
        raise NotImplementedError

    def embed_images(self, images: Sequence[Any]) -> np.ndarray:
        """Pictures (uint8 (H, W, 3) or PIL) -> float64 embeddings (B, D), not normalised."""
        torch = require_torch()
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pixels = self._pixels(images[start : start + self.batch_size])
                chunks.append(self._image_features(pixels).float().cpu().numpy().astype(np.float64))
        return np.concatenate(chunks) if chunks else np.zeros((0, 0))


def _load_processor(folder: pathlib.Path) -> Any:
    if not (folder / "preprocessor_config.json").is_file():
        return None
    from transformers import AutoImageProcessor  # heavy: only when a metric model loads

    with _quiet_transformers():
        return AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)


class DinoEmbedder(_TorchEmbedder):
    """DINO / DINOv2 (any transformers `AutoModel` ViT): embedding = CLS token of `last_hidden_state`."""

    def __init__(self, folder: str | pathlib.Path, *, device: str | None = None, batch_size: int = 32):
        require_torch()
        from transformers import AutoModel  # transformers' PyTorch models: only for the DINO metric

        self.folder = local_folder(folder, "DINO")
        self.device, self.batch_size = _default_device(device), batch_size
        with _quiet_transformers():
            self.model = AutoModel.from_pretrained(str(self.folder), local_files_only=True).to(self.device).eval()
        self.processor = _load_processor(self.folder)
        self.image_size = int(getattr(self.model.config, "image_size", 224))

    def _standard(self, images: Sequence[Any]) -> np.ndarray:
        return standard_preprocess(images, self.image_size, round(self.image_size * 256 / 224), IMAGENET_MEAN,
                                   IMAGENET_STD)

    def _image_features(self, pixels: Any) -> Any:
        return self.model(pixel_values=pixels).last_hidden_state[:, 0]

    def describe(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "model": type(self.model).__name__, "embedding": "CLS token",
                "preprocessing": "folder" if self.processor is not None else "standard (resize, crop, ImageNet)"}


class ClipEmbedder(_TorchEmbedder):
    """transformers `CLIPModel`: projected image and text embeddings (`image_embeds`, `text_embeds`)."""

    def __init__(self, folder: str | pathlib.Path, *, device: str | None = None, batch_size: int = 32):
        require_torch()
        from transformers import AutoTokenizer, CLIPModel  # transformers' PyTorch models: only for CLIP metrics

        self.folder = local_folder(folder, "CLIP")
        self.device, self.batch_size = _default_device(device), batch_size
        with _quiet_transformers():
            self.model = CLIPModel.from_pretrained(str(self.folder), local_files_only=True).to(self.device).eval()
            if any((self.folder / name).is_file() for name in TOKENIZER_FILES):
                self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
                self.tokenizer_source = str(self.folder)
            else:
                self.tokenizer, self.tokenizer_source = load_tokenizer(), "shipped OpenAI CLIP BPE"
        self.processor = _load_processor(self.folder)
        self.image_size = int(self.model.config.vision_config.image_size)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def _standard(self, images: Sequence[Any]) -> np.ndarray:
        return standard_preprocess(images, self.image_size, self.image_size, CLIP_MEAN, CLIP_STD)

    def _image_features(self, pixels: Any) -> Any:
        return self.model.visual_projection(self.model.vision_model(pixel_values=pixels).pooler_output)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts -> float64 embeddings (B, D), not normalised."""
        torch = require_torch()
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start : start + self.batch_size]), padding=True, truncation=True,
                                        max_length=self.max_length, return_tensors="pt").to(self.device)
                out = self.model.text_model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"])
                chunks.append(self.model.text_projection(out.pooler_output).float().cpu().numpy().astype(np.float64))
        return np.concatenate(chunks) if chunks else np.zeros((0, 0))

    def describe(self) -> dict[str, Any]:
        return {"folder": str(self.folder), "model": type(self.model).__name__, "embedding": "projected (CLIP space)",
                "tokenizer": self.tokenizer_source,
                "preprocessing": "folder" if self.processor is not None else "standard (resize, crop, CLIP)"}
