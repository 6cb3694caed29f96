"""The CLIP BPE tokenizer (openai/clip-vit-large-patch14) from the vocab.json / merges.txt shipped with us."""

from __future__ import annotations

import pathlib
import threading
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

ASSETS = pathlib.Path(__file__).resolve().parent / "assets" / "clip_tokenizer"
VOCAB_SIZE = 49408
END_OF_TEXT = 49407
_LOADING = threading.Lock()  # grain's reader threads may load at once; transformers' lazy import is not thread-safe


def load_tokenizer(path: str | pathlib.Path | None = None) -> CLIPTokenizer:
    """A `CLIPTokenizer` from a folder holding vocab.json and merges.txt (default: the shipped copy), offline.

    `from_pretrained(folder)` is used on purpose: transformers 5 silently ignores `vocab_file=`/`merges_file=`.
    """
    with _LOADING:
        return _load(pathlib.Path(path) if path is not None else ASSETS)


def _load(folder: pathlib.Path) -> CLIPTokenizer:
    from transformers import CLIPTokenizer  # heavy (seconds to import): loaded only when a tokenizer is needed

    missing = [n for n in ("vocab.json", "merges.txt") if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"tokenizer folder {folder} lacks {missing}")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True, pad_token="<|endoftext|>")
    if len(tokenizer) != VOCAB_SIZE or tokenizer.pad_token_id != END_OF_TEXT:
        raise ValueError(f"tokenizer in {folder} has {len(tokenizer)} tokens and pad id {tokenizer.pad_token_id}; "
                         f"the CLIP text encoder needs {VOCAB_SIZE} tokens with <|endoftext|> = {END_OF_TEXT}")
    return tokenizer


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str], length: int = 77) -> np.ndarray:
    """Prompts -> token ids (B, length) int32: <|startoftext|> ... <|endoftext|>, padded with <|endoftext|>
    and truncated (the end token kept), as Stable Diffusion 1.x."""
    if isinstance(prompts, str):
        raise TypeError("tokenize expects a list of prompts, got a single string")
    ids = tokenizer(list(prompts), padding="max_length", max_length=length, truncation=True,
                    return_tensors="np").input_ids
    return np.asarray(ids, dtype=np.int32)
