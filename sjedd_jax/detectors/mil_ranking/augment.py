"""Training-time colour jitter of the Seq-DeepFake recipe (spec section 1), as a pipeline transform.

SeqFakeFormer (the release the paper follows "for a fair comparison") applies
``torchvision.transforms.ColorJitter(brightness=[0.5, 1.3], contrast=[0.8, 1.5],
saturation=[0.2, 1.5])`` to PIL images. torchvision's ``ColorJitter.forward``
draws a random order of its four adjustments (hue is off here) and one factor per
adjustment, uniformly in its range, then calls ``F.adjust_*``, which on a PIL
image is ``PIL.ImageEnhance.{Brightness, Contrast, Color}(img).enhance(factor)``.
This module does exactly that with PIL (so the pixel arithmetic is PIL's:
uint8 between the steps, ``Image.blend`` truncation, the rounded integer mean of
the "L" image for contrast), drawing the order and the factors from the
pipeline's per-example numpy generator.

``ColorJitter`` is the detector's ``transform`` (``pipeline.DataConfig.transform``):
picklable, applied in training only, after the pipeline's flip.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance

# The release's ranges (SeqFakeFormer datasets/dataset.py): [low, high] factor per adjustment.
BRIGHTNESS = (0.5, 1.3)
CONTRAST = (0.8, 1.5)
SATURATION = (0.2, 1.5)
_ENHANCERS = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
              "saturation": ImageEnhance.Color}


def _range(name: str, value: Sequence[float] | None) -> tuple[float, float] | None:
  if value is None:
    return None
  lo, hi = (float(v) for v in value)
  if not 0.0 <= lo <= hi:
    raise ValueError(f"ColorJitter {name} range must satisfy 0 <= low <= high, got {list(value)}")
  return None if lo == hi == 1.0 else (lo, hi)


def adjust(image: np.ndarray, name: str, factor: float) -> np.ndarray:
  """One torchvision ``F.adjust_<name>`` on a PIL image: uint8 (H, W, 3) -> uint8 (H, W, 3)."""
  if name not in _ENHANCERS:
    raise ValueError(f"unknown colour adjustment {name!r}; expected one of {sorted(_ENHANCERS)}")
  img = Image.fromarray(np.ascontiguousarray(image, np.uint8))
  return np.asarray(_ENHANCERS[name](img).enhance(float(factor)))


class ColorJitter:
  """``transform(image, record, data_dir, rng, train) -> {"image": uint8}`` with torchvision's ColorJitter.

  Args:
    brightness, contrast, saturation: [low, high] factor ranges (None or [1, 1]: off).
  Call: in training, the adjustments in a random order (``rng.permutation``), each with
    a factor ``rng.uniform(low, high)``; in evaluation the image is returned unchanged.
  """

  def __init__(self, brightness: Sequence[float] | None = BRIGHTNESS, contrast: Sequence[float] | None = CONTRAST,
               saturation: Sequence[float] | None = SATURATION):
    self.ranges = {"brightness": _range("brightness", brightness), "contrast": _range("contrast", contrast),
                   "saturation": _range("saturation", saturation)}

  def params(self, rng: np.random.Generator) -> list[tuple[str, float]]:
    """The (adjustment, factor) list of one draw, in the order they are applied."""
    names = list(self.ranges)
    order = rng.permutation(len(names))
    out = []
    for i in order:
      r = self.ranges[names[i]]
      if r is not None:
        out.append((names[i], float(rng.uniform(r[0], r[1]))))
    return out

  def apply(self, image: np.ndarray, params: Sequence[tuple[str, float]]) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
      raise ValueError(f"ColorJitter expects a uint8 (H, W, 3) RGB image, got {image.dtype} {image.shape}")
    for name, factor in params:
      image = adjust(image, name, factor)
    return image

  def __call__(self, image: np.ndarray, record=None, data_dir: str = "", rng: np.random.Generator | None = None,
               train: bool = True) -> dict[str, np.ndarray]:
    del record, data_dir
    if not train:
      return {"image": image}
    rng = rng if rng is not None else np.random.default_rng()
    return {"image": self.apply(image, self.params(rng))}

  def __repr__(self) -> str:
    return f"ColorJitter({', '.join(f'{k}={list(v) if v else None}' for k, v in self.ranges.items())})"
