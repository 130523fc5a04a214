"""Sequence metrics of the sequential-deepfake task (spec section 5), numpy.

Inputs are arrays of zero-padded sequences (M, 5) (ids 1..L in manipulation
order, 0 = none) and per-component probabilities (M, L). Predictions are decoded
with ``labels.decode_predictions`` (set {P_i > 0.5}, by decreasing P).

* Fixed-Acc = mean over images and the 5 slots of [s^_t = s_t] (padding counts).
* Adaptive-Acc = sum_m a_m / sum_m c_m, c_m = max(#nonzero(s), #nonzero(s^));
  c_m = 0 -> a_m = c_m = 1; else a_m = sum_{t <= c_m} [s^_t = s_t]
  (SeqFakeFormer ``test.py``, which runs it image by image).
* Multi-label Acc = mean over images and components of [1(P_i > 0.5) = y_i] [I];
  exact-set Acc = share of images whose whole set is right [I].
* Pairwise order Acc = over all images' pairs (i, j) of Y with r_i < r_j, the
  share with P_i > P_j (strict; chance 0.5) [I].
* R^2 per component c = squared Pearson correlation of o_c (predicted rank,
  1 = largest P, ties to the lower index) and r_c over the images with c in Y [I];
  NaN when fewer than 2 such images or either side is constant.

``sequence_metrics`` returns all of them, each beside the all-original
predictor's score (``<name>_all_original``: all P = 0, decoded as [0, 0, 0, 0, 0]).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sjedd_jax.detectors.mil_ranking import labels as labels_lib


def _seqs(a: np.ndarray, name: str) -> np.ndarray:
  a = np.asarray(a)
  if a.ndim != 2:
    raise ValueError(f"{name} must be (M, slots) padded sequences, got shape {a.shape}")
  return a.astype(np.int64)


def _pair(pred: np.ndarray, true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  pred, true = _seqs(pred, "pred_seqs"), _seqs(true, "true_seqs")
  if pred.shape != true.shape:
    raise ValueError(f"pred_seqs {pred.shape} and true_seqs {true.shape} differ in shape")
  return pred, true


def fixed_acc(pred_seqs: np.ndarray, true_seqs: np.ndarray) -> float:
  """Share of equal slots over all images and slots."""
  pred, true = _pair(pred_seqs, true_seqs)
  return float(np.mean(pred == true)) if true.size else float("nan")


def adaptive_acc(pred_seqs: np.ndarray, true_seqs: np.ndarray) -> float:
  """sum_m a_m / sum_m c_m over the first c_m = max(#nonzero) slots (c_m = 0: a_m = c_m = 1)."""
  pred, true = _pair(pred_seqs, true_seqs)
  if not true.size:
    return float("nan")
  c = np.maximum((true != 0).sum(1), (pred != 0).sum(1))
  slot = np.arange(true.shape[1])[None, :]
  a = ((pred == true) & (slot < c[:, None])).sum(1)
  empty = c == 0
  a = np.where(empty, 1, a)
  c = np.where(empty, 1, c)
  return float(a.sum() / c.sum())


def multilabel_acc(probs: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> float:
  """Mean over images and components of [1(P_i > threshold) = y_i]."""
  p, y = np.asarray(probs), np.asarray(y)
  return float(np.mean((p > threshold) == (y > 0.5)))


def exact_set_acc(probs: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> float:
  """Share of images whose predicted set {P_i > threshold} equals the true set."""
  p, y = np.asarray(probs), np.asarray(y)
  return float(np.mean(np.all((p > threshold) == (y > 0.5), axis=1)))


def pairwise_order_acc(probs: np.ndarray, true_seqs: np.ndarray) -> float:
  """Share of ordered true pairs (earlier, later) with P_earlier > P_later; NaN without pairs."""
  p = np.asarray(probs, np.float64)
  true = _seqs(true_seqs, "true_seqs")
  s = true.shape[1]
  correct = total = 0
  for a in range(s):  # over slot pairs (<= 10), vectorised over images
    for b in range(a + 1, s):
      both = (true[:, a] > 0) & (true[:, b] > 0)
      if not both.any():
        continue
      rows = np.flatnonzero(both)
      pa = p[rows, true[rows, a] - 1]
      pb = p[rows, true[rows, b] - 1]
      correct += int(np.sum(pa > pb))
      total += rows.size
  return correct / total if total else float("nan")


def predicted_ranks(probs: np.ndarray) -> np.ndarray:
  """o (M, L), 1-based: 1 = largest P, ties to the lower index."""
  order = np.argsort(-np.asarray(probs, np.float64), axis=1, kind="stable")
  return np.argsort(order, axis=1, kind="stable") + 1


def r2_per_component(probs: np.ndarray, true_seqs: np.ndarray) -> np.ndarray:
  """(L,) squared Pearson correlation of o_c and r_c over images with c in Y (NaN if undefined)."""
  p = np.asarray(probs, np.float64)
  enc = labels_lib.encode_padded(_seqs(true_seqs, "true_seqs"), p.shape[1])
  o = predicted_ranks(p).astype(np.float64)
  r = enc["r"].astype(np.float64)
  out = np.full(p.shape[1], np.nan)
  for c in range(p.shape[1]):  # L columns
    rows = enc["y"][:, c] > 0.5
    if rows.sum() < 2:
      continue
    oc, rc = o[rows, c] - o[rows, c].mean(), r[rows, c] - r[rows, c].mean()
    den = np.sqrt((oc * oc).sum() * (rc * rc).sum())
    if den > 0:
      out[c] = ((oc * rc).sum() / den) ** 2
  return out


def sequence_metrics(probs: np.ndarray, true_seqs: np.ndarray, threshold: float = 0.5,
                     component_names: Sequence[str] | None = None,
                     mil_scores: np.ndarray | None = None) -> dict[str, float]:
  """All section-5 metrics of (M, L) probabilities against (M, 5) padded true sequences.

  Returns a flat dict: fixed_acc, adaptive_acc, multilabel_acc, exact_set_acc,
  pairwise_order_acc, r2_<name> per component and r2_mean (NaN-ignoring mean),
  each with ``<key>_all_original``, plus ``num_images``. ``mil_scores`` (M,)
  gate the decoding (P(x) < 0.5 -> original); the set metrics use ``probs``.
  """
  p = np.asarray(probs, np.float64)
  true = _seqs(true_seqs, "true_seqs")
  if p.ndim != 2 or p.shape[0] != true.shape[0]:
    raise ValueError(f"probs must be (M, L) with M = {true.shape[0]} images, got shape {p.shape}")
  num = p.shape[1]
  names = list(component_names) if component_names is not None else [str(i) for i in range(1, num + 1)]
  if len(names) != num:
    raise ValueError(f"{len(names)} component names for L = {num} components")
  y = labels_lib.encode_padded(true, num)["y"]

  def scores(q: np.ndarray, gate: np.ndarray | None) -> dict[str, float]:
    pred = labels_lib.decode_predictions(q, threshold, true.shape[1], gate)
    r2 = r2_per_component(q, true)
    out = {
        "fixed_acc": fixed_acc(pred, true),
        "adaptive_acc": adaptive_acc(pred, true),
        "multilabel_acc": multilabel_acc(q, y, threshold),
        "exact_set_acc": exact_set_acc(q, y, threshold),
        "pairwise_order_acc": pairwise_order_acc(q, true),
    }
    out.update({f"r2_{n}": float(v) for n, v in zip(names, r2)})
    out["r2_mean"] = float(np.nanmean(r2)) if np.isfinite(r2).any() else float("nan")
    return out

  ours = scores(p, mil_scores)
  base = scores(np.zeros_like(p), None)
  result: dict[str, float] = {"num_images": float(true.shape[0])}
  for k, v in ours.items():
    result[k] = v
    result[f"{k}_all_original"] = base[k]
  return result
