"""The caption stage (BLIP-2 via transformers `Blip2ForConditionalGeneration` + `Blip2Processor` from a local
folder, or captions already known from a JSON file) and the subject name (meta.json "sbj_txt").

Caption per photo: the captions JSON entry if there is one (a string or a list of strings), else BLIP-2 on the
whole photo (greedy or beam search), else the photo is skipped when a captions JSON was the only source, and
the caption is "" when no caption source was given at all.
Subject per photo: the subjects JSON entry, else the detector's matching query, else BLIP-2 asked
`subject_question` about the object cut out on white, else "".
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
from PIL import Image

from customnet_jax import conditioning
from customnet_jax.local_models import load_pretrained, to_device
from customnet_jax.pairs.prompts import Prompt
from customnet_jax.pairs.sources import Annotations, ImageItem, SkipImage

SUBJECT_QUESTION = "Question: what is the main object in this picture? Answer:"


class Blip2Captioner:
    """BLIP-2 from a local folder (OPT or T5 language model): `generate(picture, prompt)` -> text."""

    def __init__(self, path: str | pathlib.Path, device: str = "cpu", dtype: str = "float32",
                 max_new_tokens: int = 30, min_new_tokens: int = 0, num_beams: int = 1):
        from transformers import Blip2ForConditionalGeneration, Blip2Processor

        self.model, self.processor = load_pretrained(Blip2ForConditionalGeneration, Blip2Processor, path, "BLIP-2",
                                                     device, dtype)
        self.generation = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens,
                           "num_beams": num_beams, "do_sample": False}
        self.path = str(path)

    def generate(self, picture: np.ndarray, prompt: str | None = None) -> str:
        """Text for a uint8 RGB picture: a caption with no prompt, the answer to a "Question: ... Answer:" prompt."""
        import torch

        batch = self.processor(images=Image.fromarray(picture), text=prompt or None, return_tensors="pt")
        with torch.no_grad():
            ids = self.model.generate(**to_device(batch, self.model), **self.generation)
        text = self.processor.batch_decode(ids, skip_special_tokens=True)[0].strip()
        if prompt and text.startswith(prompt.strip()):  # decoder-only models return the prompt too
            text = text[len(prompt.strip()):].strip()
        return " ".join(text.split())


def _as_captions(value: Any) -> list[str] | None:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return list(value)
    return None


class Captions:
    """The caption stage: known captions first, then BLIP-2 (either may be None)."""

    def __init__(self, known: Annotations | None = None, model: Blip2Captioner | None = None,
                 prompt: str | None = None):
        self.known, self.model, self.prompt = known, model, prompt

    def __call__(self, item: ImageItem, photo: np.ndarray) -> tuple[list[str], str]:
        """(captions, where they came from: "json" | "blip2" | "none")."""
        if self.known is not None:
            value = self.known.get(item)
            if value is not None:
                captions = _as_captions(value)
                if captions is None:
                    raise SkipImage("caption", f"given caption {value!r} is not a string or a list of strings")
                return captions, "json"
        if self.model is not None:
            return [self.model.generate(photo, self.prompt)], "blip2"
        if self.known is not None:
            raise SkipImage("caption", f"no caption for this photo in {self.known.path or 'the known captions'} "
                                       "(and no BLIP-2 model)")
        return [""], "none"


class Subjects:
    """The subject stage (meta.json "sbj_txt")."""

    def __init__(self, known: Annotations | None = None, model: Blip2Captioner | None = None,
                 question: str | None = SUBJECT_QUESTION):
        self.known, self.model, self.question = known, model, question

    def __call__(self, item: ImageItem, photo: np.ndarray, mask: np.ndarray, prompt: Prompt) -> tuple[str, str]:
        """(subject, where it came from: "json" | "detector" | "blip2" | "none")."""
        if self.known is not None:
            value = self.known.get(item)
            if isinstance(value, str) and value.strip():
                return value.strip(), "json"
        if prompt.label:
            return prompt.label, "detector"
        if self.model is not None and self.question:
            cutout = conditioning.object_on_white(photo, mask)  # float [-1, 1], 256 px
            picture = conditioning.to_uint8(cutout)
            return self.model.generate(picture, self.question), "blip2"
        return "", "none"
