"""Face-region masks from 68 iBUG/dlib landmarks (spec section 7).

The same masks serve real (dlib-preprocessed) and synthetic faces: both carry
68 (x, y) landmarks in crop pixels, in the iBUG order

    jaw 0-16 | brows 17-21 (image left), 22-26 | nose bridge 27-30, base 31-35
    eyes 36-41 (image left), 42-47 | outer lip 48-59 | inner lip 60-67

A region mask is the union of the convex hulls of the region's landmark groups,
dilated by a fraction of the face size, then Gaussian-blurred; float32 in [0, 1].

Example::

    m = region_mask(landmarks, (h, w), "eye")        # both eyes, soft edges
    hard = region_mask(landmarks, (h, w), "nose", dilate=0.0, blur=0.0)
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

JAW = tuple(range(0, 17))
BROW_L, BROW_R = tuple(range(17, 22)), tuple(range(22, 27))
NOSE = tuple(range(27, 36))
EYE_L, EYE_R = tuple(range(36, 42)), tuple(range(42, 48))
MOUTH_OUTER, MOUTH_INNER = tuple(range(48, 60)), tuple(range(60, 68))

# Region name -> landmark groups; one convex hull per group.
REGIONS: dict[str, tuple[tuple[int, ...], ...]] = {
    "eye": (EYE_L, EYE_R),
    "eyebrow": (BROW_L, BROW_R),
    "lip_mouth": (MOUTH_OUTER + MOUTH_INNER,),
    "nose": (NOSE,),
    # Inner face: brows, eyes, nose and mouth (the area identity swaps replace).
    "inner_face": (tuple(range(17, 68)),),
    # Skin / whole face: jaw line plus brows.
    "skin": (JAW + BROW_L + BROW_R,),
}
REGIONS["face"] = REGIONS["skin"]

# Default dilation (fraction of face size) and blur sigma (fraction of face size) per region.
DEFAULT_DILATE = {"eye": 0.06, "eyebrow": 0.04, "lip_mouth": 0.05, "nose": 0.06,
                  "inner_face": 0.02, "skin": 0.0, "face": 0.0}
DEFAULT_BLUR = 0.035


def check_landmarks(landmarks, where: str = "landmarks") -> np.ndarray:
  """(68, 2) float32 array, or a ValueError naming ``where``."""
  lm = np.asarray(landmarks, np.float32) if landmarks is not None else None
  if lm is None or lm.shape != (68, 2) or not np.all(np.isfinite(lm)):
    shape = None if lm is None else lm.shape
    raise ValueError(f"{where}: expected 68 finite (x, y) landmarks, got shape {shape}")
  return lm


def face_size(landmarks) -> float:
  """A scale for the face: the diagonal of the landmarks' bounding box."""
  lm = np.asarray(landmarks, np.float32)
  return float(np.hypot(*(lm.max(0) - lm.min(0))))


def hull_mask(points_groups: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
  """Union of filled convex hulls as a float32 {0, 1} mask of ``shape`` (h, w)."""
  mask = np.zeros(shape[:2], np.uint8)
  for pts in points_groups:
    hull = cv2.convexHull(np.round(np.asarray(pts, np.float32) * 16).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 255, lineType=cv2.LINE_AA, shift=4)
  return mask.astype(np.float32) / 255.0


def region_mask(landmarks, shape: tuple[int, int], region: str, *, dilate: float | None = None,
                blur: float | None = None) -> np.ndarray:
  """Soft mask of a named region; float32 (h, w) in [0, 1].

  ``dilate`` and ``blur`` (Gaussian sigma) are fractions of the face size
  (``face_size``); None takes the region's default, 0 turns the step off.
  """
  if region not in REGIONS:
    raise KeyError(f"unknown region {region!r}; expected one of {sorted(REGIONS)}")
  lm = check_landmarks(landmarks)
  groups = [lm[list(g)] for g in REGIONS[region]]
  return soft_mask(groups, shape, face_size(lm),
                   DEFAULT_DILATE[region] if dilate is None else dilate,
                   DEFAULT_BLUR if blur is None else blur)


def soft_mask(groups: Sequence[np.ndarray], shape: tuple[int, int], scale: float,
              dilate: float, blur: float) -> np.ndarray:
  """Hulls of ``groups``, dilated by ``dilate * scale`` px, blurred with sigma ``blur * scale``."""
  mask = hull_mask(groups, shape)
  r = int(round(dilate * scale))
  if r > 0:
    mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
  elif r < 0:
    mask = cv2.erode(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (-2 * r + 1, -2 * r + 1)))
  sigma = blur * scale
  if sigma > 0:
    mask = cv2.GaussianBlur(mask, (0, 0), sigma)
  return np.clip(mask, 0.0, 1.0)


def masks(landmarks, shape: tuple[int, int], regions: Sequence[str] = ("eye", "eyebrow", "lip_mouth", "nose", "skin"),
          **kwargs) -> dict[str, np.ndarray]:
  """All named region masks of one face."""
  return {r: region_mask(landmarks, shape, r, **kwargs) for r in regions}
