"""What ``predict`` says about one file for LiSiam: a sentence and the localisation map as a PNG overlay.

``describe(outputs)`` and ``plot(outputs, path, title=..., image=...)`` receive the file's
outputs averaged over its faces (a video: over its frames): ``p_fake`` and ``mask_prob``,
the (h, w) map of P(fake) per position of the segmentation output (X_s, channel 1).
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np


def _map(outputs: Mapping) -> np.ndarray:
  m = np.asarray(outputs["mask_prob"], np.float64)
  if m.ndim != 2:
    raise ValueError(f"mask_prob must be one (h, w) map (a file's mean), got shape {m.shape}")
  return m


def _region(m: np.ndarray, threshold: float) -> list[float] | None:
  """Bounding box [x0, y0, x1, y1] of the predicted forged area, in fractions of the face crop."""
  ys, xs = np.nonzero(m > threshold)
  if not len(ys):
    return None
  h, w = m.shape
  return [round(float(xs.min()) / w, 3), round(float(ys.min()) / h, 3), round(float(xs.max() + 1) / w, 3),
          round(float(ys.max() + 1) / h, 3)]


def describe(outputs: Mapping, *, threshold: float = 0.5, subject: str = "face image") -> dict:
  """JSON fields for one file: predicted forged area (fraction of the crop), its box, the map's peak."""
  m = _map(outputs)
  p = float(np.asarray(outputs["p_fake"]))
  area = float(np.mean(m > threshold))
  box = _region(m, threshold)
  verdict = "fake" if p > threshold else "real"
  text = f"The {subject} is {verdict} (P(fake) = {p:.2f}); {100 * area:.0f}% of the face crop is localised as forged"
  if box is not None:
    text += f" (box x {box[0]:.2f}-{box[2]:.2f}, y {box[1]:.2f}-{box[3]:.2f} of the crop)"
  return {"fake_area": area, "fake_region": box, "map_max": float(m.max()), "explanation": text + "."}


def overlay(image: np.ndarray, m: np.ndarray, alpha: float = 0.45) -> np.ndarray:
  """The map (bilinear to the image's size) as a jet-coloured layer over an (H, W, 3) uint8 RGB image."""
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"overlay needs an (H, W, 3) RGB image, got shape {image.shape}")
  h, w = image.shape[:2]
  up = cv2.resize(np.asarray(m, np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
  heat = cv2.applyColorMap(np.clip(up * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_JET)
  heat = cv2.cvtColor(heat, cv2.COLOR_BGR2RGB)
  out = (1 - alpha) * image.astype(np.float32) + alpha * heat.astype(np.float32)
  return np.clip(out, 0, 255).astype(np.uint8)


def plot(outputs: Mapping, path: str, *, title: str, image: np.ndarray | None = None, threshold: float = 0.5,
         face: np.ndarray | None = None, **unused) -> str:
  """Writes ``path`` (PNG): the P(fake) map over the face, and the map alone with a colour bar.

  ``face`` (the face crop the model saw) is preferred, then ``image`` (``predict`` passes the
  original frame of an image file, which is the face crop itself with ``--no_detect``); with
  neither (videos) the map is drawn alone. The dashed contour is the decision threshold.
  """
  del unused
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  m = _map(outputs)
  picture = face if face is not None else image
  panels = 2 if picture is not None else 1
  fig = Figure(figsize=(4.2 * panels, 4.4))
  FigureCanvasAgg(fig)
  axes = fig.subplots(1, panels, squeeze=False)[0]
  if picture is not None:
    picture = np.asarray(picture)
    if picture.dtype != np.uint8:
      picture = np.clip(picture, 0, 255).astype(np.uint8)
    ax = axes[0]
    ax.imshow(overlay(picture, m))
    h, w = picture.shape[:2]
    up = cv2.resize(m.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    if up.min() < threshold < up.max():
      ax.contour(up, levels=[threshold], colors="white", linewidths=1.0, linestyles="dashed")
    ax.set_title("P(fake) over the face", fontsize=9)
    ax.axis("off")
  ax = axes[-1]
  im = ax.imshow(m, cmap="jet", vmin=0.0, vmax=1.0, interpolation="bilinear")
  ax.set_title(f"localisation map {m.shape[0]}x{m.shape[1]}", fontsize=9)
  ax.axis("off")
  fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
  fig.suptitle(title if len(title) < 110 else title[:107] + "...", fontsize=9)
  fig.tight_layout(rect=(0, 0, 1, 0.94))
  import os  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  return path
