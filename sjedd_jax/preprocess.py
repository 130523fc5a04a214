"""CLIP image preprocessing (spec section 6): resize (bicubic, no crop), normalise.

Two forms of the same thing: ``preprocess_np`` (numpy/PIL, for the input pipeline
on the host) and ``preprocess_jnp`` (pure JAX, for images already on device).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


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


def normalise_np(image: np.ndarray) -> np.ndarray:
  """uint8 (..., 3) in [0, 255] -> float32 normalised with CLIP mean/std."""
  x = np.asarray(image, np.float32) / 255.0
  return (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)


def preprocess_np(image: np.ndarray, size: int = 224) -> np.ndarray:
  """(H, W, 3) uint8 RGB -> (size, size, 3) float32, CLIP-normalised."""
  return normalise_np(resize_np(image, size))


def preprocess_jnp(images: jax.Array, size: int = 224) -> jax.Array:
  """(..., H, W, 3) uint8 or [0, 255] float -> (..., size, size, 3) float32, normalised.

  Uses ``jax.image.resize`` (bicubic, antialiased when shrinking); it matches PIL
  closely but not bit-for-bit, so a pipeline should use one form consistently.
  """
  x = jnp.asarray(images, jnp.float32)
  if x.shape[-3:-1] != (size, size):
    shape = x.shape[:-3] + (size, size, x.shape[-1])
    x = jax.image.resize(x, shape, method="bicubic", antialias=True)
    x = jnp.clip(x, 0.0, 255.0)
  x = x / 255.0
  return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)
