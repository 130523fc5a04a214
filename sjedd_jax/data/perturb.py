"""Label-preserving training perturbations (spec section 6).

With probability 0.3 a training image gets one of five perturbations, chosen
uniformly, at level 1 or 2 (probability 1/2 each). The paper follows
DeeperForensics-1.0 (its ref. [31]/[52]), whose severity levels 1 and 2 are exactly
the spec's numbers; this module uses those levels:

| name        | level 1        | level 2            | what it does                                           |
|-------------|----------------|--------------------|--------------------------------------------------------|
| patch       | block 16       | block 32           | a random BxB block is replaced by another BxB block of the same image (spec wording) |
| noise       | variance 0.001 | variance 0.002     | i.i.d. Gaussian noise per pixel and channel on [0, 1] RGB (colour noise) |
| blur        | kernel 7       | kernel 9           | Gaussian blur, sigma = kernel / 6 (DeeperForensics)     |
| pixelate    | factor 2       | factor 3           | downsample by the factor, upsample back (bilinear both ways, DeeperForensics' "JPEG") |
| jpeg        | quality 90     | quality 80 or 75   | real JPEG encode/decode (OpenCV); level 2 picks 80 or 75 uniformly |

The spec lists three JPEG qualities for two levels; level 2 takes the two lower
ones. ``patch_mode="deeperforensics"`` gives DeeperForensics' own block-wise
distortion instead (16 or 32 grey 8x8 blocks per 256 px of the shorter side).

Everything is a pure function of the image and an explicit ``np.random.Generator``:

    rng = np.random.default_rng(seed)
    out = perturb(image, rng)                 # the training-time random perturbation
    out = apply(image, "blur", level=2, rng=rng)
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

NAMES = ("patch", "noise", "blur", "pixelate", "jpeg")
PROBABILITY = 0.3
PATCH_BLOCK = {1: 16, 2: 32}
NOISE_VARIANCE = {1: 0.001, 2: 0.002}
BLUR_KERNEL = {1: 7, 2: 9}
PIXELATE_FACTOR = {1: 2, 2: 3}
JPEG_QUALITY = {1: (90,), 2: (80, 75)}


def patch_substitution(image: np.ndarray, block: int, rng: np.random.Generator) -> np.ndarray:
  """Copies a random ``block`` x ``block`` patch over another random, different position.

  The block is clamped to the image's shorter side halved, so the two positions can differ.
  """
  img = _check(image).copy()
  h, w = img.shape[:2]
  b = max(1, min(block, h // 2, w // 2))
  src = (rng.integers(0, h - b + 1), rng.integers(0, w - b + 1))
  while True:
    dst = (rng.integers(0, h - b + 1), rng.integers(0, w - b + 1))
    if dst != src:
      break
  img[dst[0]:dst[0] + b, dst[1]:dst[1] + b] = image[src[0]:src[0] + b, src[1]:src[1] + b]
  return img


def grey_blocks(image: np.ndarray, count: int, rng: np.random.Generator, width: int = 8) -> np.ndarray:
  """DeeperForensics' block-wise distortion: ``count * max(1, min(H, W) // 256)`` grey 8x8 blocks."""
  img = _check(image).copy()
  h, w = img.shape[:2]
  width = min(width, h - 1, w - 1)
  for _ in range(count * max(1, min(h, w) // 256)):
    y, x = rng.integers(0, h - width), rng.integers(0, w - width)
    img[y:y + width, x:x + width] = 128
  return img


def gaussian_noise(image: np.ndarray, variance: float, rng: np.random.Generator) -> np.ndarray:
  """Adds N(0, variance) to each pixel and channel of the image scaled to [0, 1]."""
  x = _check(image).astype(np.float32) / 255.0
  x = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(np.sqrt(variance))
  return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


def gaussian_blur(image: np.ndarray, kernel: int) -> np.ndarray:
  return cv2.GaussianBlur(_check(image), (kernel, kernel), kernel / 6.0)


def pixelate(image: np.ndarray, factor: int) -> np.ndarray:
  img = _check(image)
  h, w = img.shape[:2]
  small = cv2.resize(img, (max(1, w // factor), max(1, h // factor)), interpolation=cv2.INTER_LINEAR)
  return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
  """A real JPEG round trip at ``quality`` (OpenCV's libjpeg)."""
  img = _check(image)
  ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
  if not ok:
    raise RuntimeError("JPEG encoding failed")
  return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def apply(image: np.ndarray, name: str, level: int, rng: np.random.Generator,
          patch_mode: str = "block") -> np.ndarray:
  """Perturbation ``name`` at ``level`` (1 or 2); (H, W, 3) uint8 in, same out."""
  if level not in (1, 2):
    raise ValueError(f"level must be 1 or 2, got {level}")
  if name == "patch":
    if patch_mode == "block":
      return patch_substitution(image, PATCH_BLOCK[level], rng)
    if patch_mode == "deeperforensics":
      return grey_blocks(image, PATCH_BLOCK[level], rng)
    raise ValueError(f"patch_mode must be 'block' or 'deeperforensics', got {patch_mode!r}")
  if name == "noise":
    return gaussian_noise(image, NOISE_VARIANCE[level], rng)
  if name == "blur":
    return gaussian_blur(image, BLUR_KERNEL[level])
  if name == "pixelate":
    return pixelate(image, PIXELATE_FACTOR[level])
  if name == "jpeg":
    qualities = JPEG_QUALITY[level]
    return jpeg(image, qualities[int(rng.integers(len(qualities)))])
  raise ValueError(f"unknown perturbation {name!r}; expected one of {NAMES}")


def perturb(image: np.ndarray, rng: np.random.Generator, probability: float = PROBABILITY,
            names: tuple[str, ...] = NAMES, patch_mode: str = "block") -> np.ndarray:
  """The training-time perturbation: with ``probability``, one of ``names`` at level 1 or 2.

  Deterministic given the generator's state; returns the input unchanged otherwise.
  """
  if rng.random() >= probability:
    return image
  name = names[int(rng.integers(len(names)))]
  level = int(rng.integers(1, 3))
  return apply(image, name, level, rng, patch_mode)


def make(probability: float = PROBABILITY, names: tuple[str, ...] = NAMES,
         patch_mode: str = "block") -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
  """``perturb`` with fixed options, as an ``(image, rng) -> image`` function."""
  for n in names:
    if n not in NAMES:
      raise ValueError(f"unknown perturbation {n!r}; expected some of {NAMES}")

  def fn(image, rng):
    return perturb(image, rng, probability, names, patch_mode)
  return fn


def _check(image) -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")
  return np.ascontiguousarray(image)
