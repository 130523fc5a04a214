"""CLIP's tokenizer and token-id conventions (start/end tokens, 0 padding, context 77).

``ClipTokenizer`` wraps the BPE tokenizer of a Hugging Face CLIP checkpoint
directory; ``pad`` and ``longest`` handle the id matrices every CLIP text tower
reads (the end-of-text id is the largest, and CLIP pools there).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

SOT = 49406  # <|startoftext|>
EOT = 49407  # <|endoftext|>, the largest id: CLIP pools at argmax(ids)
CONTEXT_LENGTH = 77


class TemplateError(ValueError):
  """Templates that cannot be tokenised (no tokenizer, too long, wrong count)."""



def pad(ids: Sequence[Sequence[int]], context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """Lists of ids -> (K, context_length) int32, padded with 0 (as OpenAI's tokenizer)."""
  out = np.zeros((len(ids), context_length), np.int32)
  for i, row in enumerate(ids):
    if len(row) > context_length:
      raise TemplateError(f"template {i} has {len(row)} tokens, more than the context length {context_length}")
    if not row or row[-1] != EOT or max(row) != EOT:
      raise TemplateError(f"template {i} ids {list(row)} must end with the end-of-text id {EOT}, the largest")
    out[i, :len(row)] = row
  return out


def repad(ids: np.ndarray, context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """(K, L) id rows (each ending at its end-of-text id) padded again to ``context_length``."""
  return pad([r[:int(np.argmax(r)) + 1].tolist() for r in np.asarray(ids)], context_length)


def longest(ids: np.ndarray) -> int:
  """Length of the longest template (position of its end-of-text token + 1)."""
  return int(np.max(np.argmax(np.asarray(ids), axis=-1))) + 1


class ClipTokenizer:
  """CLIP BPE tokenizer, from the tokenizer files of a Hugging Face CLIP checkpoint.

  ``tok(texts)`` -> (K, 77) int32 ids: start token, BPE ids, end token, then 0s
  (OpenAI's padding; HF pads with the end token, which pools identically).
  """

  FILES = ("tokenizer.json", "vocab.json")

  def __init__(self, hf_tokenizer, context_length: int = CONTEXT_LENGTH):
    self.hf = hf_tokenizer
    self.context_length = context_length

  @classmethod
  def has_files(cls, path: str | os.PathLike) -> bool:
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in cls.FILES)

  @classmethod
  def from_pretrained(cls, path: str | os.PathLike, context_length: int = CONTEXT_LENGTH) -> "ClipTokenizer":
    from transformers import CLIPTokenizer  # pylint: disable=g-import-not-at-top
    if not cls.has_files(path):
      raise TemplateError(f"{path}: no CLIP tokenizer files ({' or '.join(cls.FILES)})")
    try:
      hf = CLIPTokenizer.from_pretrained(os.fspath(path))
    except Exception as e:  # pylint: disable=broad-except
      raise TemplateError(f"{path}: could not load the CLIP tokenizer ({type(e).__name__}: {e})") from e
    return cls(hf, context_length)

  def __call__(self, texts: Sequence[str] | str) -> np.ndarray:
    if isinstance(texts, str):
      texts = [texts]
    rows = self.hf(list(texts), add_special_tokens=True, padding=False, truncation=False)["input_ids"]
    rows = [list(r) for r in rows]
    for t, r in zip(texts, rows):
      if not r or r[0] != SOT or r[-1] != EOT:
        raise TemplateError(f"tokenizer did not wrap {t!r} in start/end tokens {SOT}/{EOT}: {r}")
    return pad(rows, self.context_length)
