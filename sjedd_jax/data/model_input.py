"""A face crop -> a model's input: resize (bicubic, no crop) and normalise with the backbone's mean/std.

Every backbone states its normalisation (``backbones/<name>/__init__.py``:
``MEAN``, ``STD`` on the [0, 1] scale); the pipeline, the evaluator and
``predict`` take it from the detector, so one code path serves CLIP
(SJEDD, JEDD), Xception and ResNet detectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def resize_np(image: np.ndarray, size: int) -> np.ndarray:
  """Bicubic resize of a (H, W, 3) uint8 image to (size, size, 3) uint8 with PIL."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected a (H, W, 3) RGB image, got shape {image.shape}")
  if image.shape[:2] == (size, size):
    return image.astype(np.uint8, copy=False)
  if image.dtype != np.uint8:
    raise ValueError(f"expected uint8 pixels for resizing, got {image.dtype}")
  return np.asarray(Image.fromarray(image).resize((size, size), Image.BICUBIC))


def normalise_np(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """uint8 (..., 3) in [0, 255] -> float32 (x / 255 - mean) / std."""
  x = np.asarray(image, np.float32) / 255.0
  return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def preprocess_np(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """(H, W, 3) uint8 RGB -> (size, size, 3) float32, normalised."""
  return normalise_np(resize_np(image, size), mean, std)
