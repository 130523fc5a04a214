"""LiSiam's own evaluation metrics (spec lisiam.md section 5 [I]), host-side numpy.

* ``localisation``: on fake images, pixel IoU and F1 of [P_fake > 0.5] against the
  ground-truth mask (pixels labelled 255 ignored), per image then averaged (and pooled over
  all pixels), and the pixel AUC of P_fake (pooled, subsampled to ``max_pixels``); on real
  images, the mean predicted fake area. Probability maps at another resolution than the
  masks are resized bilinearly (half-pixel centres) to the masks'.
* ``view_consistency``: mean |P_fake map of view 1 - that of view 2|.
* ``video_vote_accuracy``: the release's video accuracy, a majority vote of the frames'
  0/1 decisions (a video is called fake when more than half of its frames are).
"""

from __future__ import annotations

from collections.abc import Mapping

import cv2
import numpy as np

IGNORE = 255


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """(N, h, w) float maps -> (N, H, W), bilinear with half-pixel centres (cv2's INTER_LINEAR)."""
  maps = np.asarray(maps, np.float32)
  if maps.shape[1:3] == tuple(size):
    return maps
  return np.stack([cv2.resize(m, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR) for m in maps])


def localisation(mask_prob: np.ndarray, mask: np.ndarray, y: np.ndarray, threshold: float = 0.5,
                 max_pixels: int = 2_000_000, seed: int = 0) -> dict[str, float | int | None]:
  """Pixel metrics of predicted fake-probability maps against ground-truth masks.

  Args:
    mask_prob: (N, h, w) P(fake) per pixel.
    mask: (N, H, W) labels {0 pristine, 1 forged, 255 ignored}.
    y: (N,) or (N, 1) image labels (1 fake).
    threshold: the decision threshold of the maps.
    max_pixels: the pixel AUC uses at most this many (uniformly subsampled) pixels.
  Returns:
    {"iou", "f1", "iou_pooled", "pixel_auc", "fake_area_real", "fake_area_fake",
    "num_fake", "num_real"}; None where there is nothing to measure.
  """
  mask = np.asarray(mask)
  y = np.asarray(y).reshape(-1)
  mask_prob = np.asarray(mask_prob)
  if mask.ndim != 3 or mask_prob.ndim != 3 or len(mask) != len(mask_prob) or len(y) != len(mask):
    raise ValueError(f"localisation: expected (N, h, w) maps, (N, H, W) masks and (N,) labels; got "
                     f"{mask_prob.shape}, {mask.shape}, {y.shape}")
  prob = resize_maps(mask_prob, mask.shape[1:3])
  pred = prob > threshold
  valid = mask != IGNORE
  gt = mask == 1
  fake = (y > 0.5) & valid.reshape(len(mask), -1).any(1)
  real = y <= 0.5
  out: dict[str, float | int | None] = {"num_fake": int(fake.sum()), "num_real": int(real.sum())}
  if fake.any():
    p, g, v = pred[fake], gt[fake], valid[fake]
    inter = (p & g & v).reshape(len(p), -1).sum(1).astype(np.float64)
    union = ((p | g) & v).reshape(len(p), -1).sum(1).astype(np.float64)
    size = ((p & v).reshape(len(p), -1).sum(1) + (g & v).reshape(len(p), -1).sum(1)).astype(np.float64)
    out["iou"] = float(np.mean(np.where(union > 0, inter / np.maximum(union, 1), 1.0)))
    out["f1"] = float(np.mean(np.where(size > 0, 2 * inter / np.maximum(size, 1), 1.0)))
    out["iou_pooled"] = float(inter.sum() / max(union.sum(), 1.0))
    out["fake_area_fake"] = float(np.mean(pred[fake]))
    scores, labels = prob[fake][v], g[v]
    if len(scores) > max_pixels:
      pick = np.random.default_rng(seed).choice(len(scores), max_pixels, replace=False)
      scores, labels = scores[pick], labels[pick]
    if labels.any() and not labels.all():
      from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
      out["pixel_auc"] = float(roc_auc_score(labels, scores))
    else:
      out["pixel_auc"] = None
  else:
    out.update(iou=None, f1=None, iou_pooled=None, fake_area_fake=None, pixel_auc=None)
  out["fake_area_real"] = float(np.mean(pred[real])) if real.any() else None
  return out


def view_consistency(prob1: np.ndarray, prob2: np.ndarray) -> float:
  """Mean absolute difference of two views' P(fake) maps (same shapes)."""
  a, b = np.asarray(prob1, np.float64), np.asarray(prob2, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"view_consistency: maps of different shapes {a.shape} and {b.shape}")
  return float(np.mean(np.abs(a - b)))


def video_vote_accuracy(p_fake: np.ndarray, is_fake: np.ndarray, video: np.ndarray,
                        threshold: float = 0.5) -> float | None:
  """Video accuracy by majority vote of frame decisions (p > threshold): fake when > half are."""
  p_fake, is_fake, video = (np.asarray(a).reshape(-1) for a in (p_fake, is_fake, video))
  keep = video >= 0
  if not keep.any():
    return None
  ids, inv = np.unique(video[keep], return_inverse=True)
  votes = np.bincount(inv, weights=(p_fake[keep] > threshold).astype(np.float64), minlength=len(ids))
  frames = np.bincount(inv, minlength=len(ids)).astype(np.float64)
  truth = np.bincount(inv, weights=(is_fake[keep] > 0.5).astype(np.float64), minlength=len(ids)) / frames
  return float(np.mean((votes / frames > 0.5) == (truth > 0.5)))


def summarize(own: Mapping | None) -> dict[str, float]:
  """Numbers for a table from ``eval_metrics``' ``"lisiam"`` entry."""
  own = own or {}
  loc = own.get("localisation") or {}
  out = {}
  for key, name in (("iou", "pixel IoU (fakes)"), ("f1", "pixel F1 (fakes)"), ("pixel_auc", "pixel AUC"),
                    ("fake_area_real", "fake area (reals)")):
    if loc.get(key) is not None:
      out[name] = float(loc[key])
  if own.get("view_consistency") is not None:
    out["view consistency"] = float(own["view_consistency"])
  if own.get("video_vote_acc") is not None:
    out["video ACC (vote)"] = float(own["video_vote_acc"])
  return out
