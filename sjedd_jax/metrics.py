"""Evaluation metrics (spec section 8): frame, video and per-node, on the host in numpy.

Frame level scores are P(node 0 = 1), the primary "fake face" marginal. Video level
scores are the mean of that probability over a video's frames. AUC and AP come from
scikit-learn; EER is read off the ROC curve where FPR = FNR, linearly interpolated
between the two ROC points that bracket the crossing.

Degenerate input, decided once for every function here:
  * empty input, mismatched lengths, NaN/inf scores, scores outside [0, 1] or labels
    other than 0/1 raise ``MetricsError`` (a ``ValueError``) that names the field;
  * a single class (all real or all fake) is not an error: AUC, AP and EER are NaN
    and a ``UserWarning`` says why; ACC and the counts are still computed.
  * per-node AUCs are NaN (no warning) for nodes with no observed entry or one class.

Example::

    r = evaluate_predictions(p_fake, is_fake, video_ids)   # {"frame": .., "video": ..}
    print(results_table({"CDF": r}))
    write_results(workdir, {"CDF": r})
    plot_roc({"CDF": (p_fake, is_fake)}, "roc.png")

Streaming (evaluation visits batches)::

    acc = Accumulator(node_names=hierarchy.nodes)
    for batch in loader:
      acc.add(marginals, y, mask, is_fake, video_index, valid)
    results = acc.result()
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn import metrics as skm

__all__ = [
    "MetricsError", "frame_metrics", "video_metrics", "aggregate_videos", "node_aucs",
    "roc_eer", "evaluate_predictions", "results_table", "write_results", "plot_roc",
    "Accumulator", "to_jsonable",
]


class MetricsError(ValueError):
  """Inputs that no metric can be computed from."""


# ---------------------------------------------------------------- validation
def _as_scores(p: Any, name: str = "p_fake") -> np.ndarray:
  p = np.asarray(p, dtype=np.float64)
  if p.ndim > 1 and sum(d != 1 for d in p.shape) <= 1:
    p = p.reshape(-1)  # (N, 1) and the like
  if p.ndim != 1:
    raise MetricsError(f"{name} must be a 1-D array of probabilities, got shape {p.shape}")
  if p.size == 0:
    raise MetricsError(f"{name} is empty: no predictions to evaluate")
  bad = ~np.isfinite(p)
  if bad.any():
    i = int(np.flatnonzero(bad)[0])
    raise MetricsError(
        f"{name} has {int(bad.sum())} non-finite value(s) of {p.size} (first at index {i}: {p[i]}); "
        "a NaN probability means the model or its inputs diverged")
  lo, hi = float(p.min()), float(p.max())
  if lo < -1e-6 or hi > 1 + 1e-6:
    raise MetricsError(
        f"{name} must be probabilities in [0, 1], got values in [{lo:g}, {hi:g}]; "
        "pass marginals P(fake), not raw scores/logits")
  return np.clip(p, 0.0, 1.0)


def _as_labels(y: Any, n: int, name: str = "is_fake") -> np.ndarray:
  y = np.asarray(y)
  if y.ndim > 1 and sum(d != 1 for d in y.shape) <= 1:
    y = y.reshape(-1)  # (N, 1) and the like
  if y.ndim != 1 or y.shape[0] != n:
    raise MetricsError(f"{name} must have shape ({n},) like the scores, got {y.shape}")
  if y.dtype != bool:
    yf = y.astype(np.float64)
    bad = ~np.isin(yf, (0.0, 1.0))
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise MetricsError(f"{name} must be 0/1 (real/fake), got {y[i]!r} at index {i}")
    y = yf == 1.0
  return y


def _single_class_warning(what: str, y: np.ndarray) -> None:
  cls = "fake" if y.all() else "real"
  warnings.warn(
      f"{what}: all {y.size} samples are {cls}; AUC, AP and EER are undefined (NaN)",
      UserWarning, stacklevel=4)


# ------------------------------------------------------------------- metrics
def roc_eer(fpr: np.ndarray, tpr: np.ndarray) -> float:
  """Equal error rate from an ROC curve: the FPR where FPR = FNR = 1 - TPR.

  ``fpr``/``tpr`` are sorted as ``sklearn.metrics.roc_curve`` returns them (FPR
  non-decreasing). The crossing is linearly interpolated along the ROC segment that
  brackets it, so a tie between a real and a fake score (a diagonal segment) is
  handled exactly. Example: real {0.1, 0.5}, fake {0.5, 0.9} gives EER 0.25.
  """
  fpr = np.asarray(fpr, np.float64)
  fnr = 1.0 - np.asarray(tpr, np.float64)
  d = fpr - fnr  # -1 at (0, 0), +1 at (1, 1), non-decreasing along the curve
  i = int(np.argmax(d >= 0))
  if d[i] < 0:  # cannot happen for a complete ROC curve
    return float("nan")
  if i == 0 or d[i] == 0:
    return float((fpr[i] + fnr[i]) / 2)
  t = -d[i - 1] / (d[i] - d[i - 1])
  return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def frame_metrics(p_fake: Any, is_fake: Any, threshold: float = 0.5) -> dict[str, float]:
  """AUC, AP, ACC (fake iff p > threshold), EER and counts for one set of scores.

  Returns a dict with ``auc``, ``ap``, ``acc``, ``eer``, ``acc_real`` (TNR),
  ``acc_fake`` (TPR), ``n``, ``n_real``, ``n_fake`` and ``log_loss`` (the
  cross-entropy of P(fake), e.g. a validation loss for a plateau schedule). Metrics are fractions in [0, 1].
  One class only: ``auc``/``ap``/``eer`` are NaN, with a warning.

  >>> frame_metrics([0.1, 0.5, 0.5, 0.9], [0, 0, 1, 1])["auc"]
  0.875
  """
  p = _as_scores(p_fake)
  y = _as_labels(is_fake, p.size)
  return _metrics(p, y, threshold, "frame_metrics")


def _metrics(p: np.ndarray, y: np.ndarray, threshold: float, what: str) -> dict[str, float]:
  pred = p > threshold
  n_fake = int(y.sum())
  n_real = int(y.size - n_fake)
  out = {
      "auc": float("nan"), "ap": float("nan"), "eer": float("nan"),
      "acc": float((pred == y).mean()),
      "acc_real": float((~pred[~y]).mean()) if n_real else float("nan"),
      "acc_fake": float(pred[y].mean()) if n_fake else float("nan"),
      "n": int(y.size), "n_real": n_real, "n_fake": n_fake,
      # Cross-entropy of P(fake) (natural log; probabilities clipped to [1e-7, 1 - 1e-7]).
      "log_loss": float(-np.mean(np.where(y, np.log(np.clip(p, 1e-7, 1.0)), np.log(np.clip(1.0 - p, 1e-7, 1.0))))),
  }
  if n_real == 0 or n_fake == 0:
    _single_class_warning(what, y)
    return out
  fpr, tpr, _ = skm.roc_curve(y, p, drop_intermediate=False)
  out["auc"] = float(skm.roc_auc_score(y, p))
  out["ap"] = float(skm.average_precision_score(y, p))
  out["eer"] = roc_eer(fpr, tpr)
  return out


def aggregate_videos(p_fake: Any, is_fake: Any, video_ids: Any) -> dict[str, np.ndarray]:
  """Per-video mean probability (spec section 8) and the video's label.

  ``video_ids`` are any hashable ids (ints or strings), one per frame. A video whose
  frames disagree on the label raises ``MetricsError`` naming it. Returns ``ids``,
  ``p_fake``, ``is_fake`` and ``n_frames``, one entry per video in sorted id order.
  """
  p = _as_scores(p_fake)
  y = _as_labels(is_fake, p.size)
  vid = np.asarray(video_ids)
  if vid.ndim != 1 or vid.shape[0] != p.size:
    raise MetricsError(f"video_ids must have shape ({p.size},) like the scores, got {vid.shape}")
  ids, inv, counts = np.unique(vid, return_inverse=True, return_counts=True)
  p_vid = np.bincount(inv, weights=p, minlength=ids.size) / counts
  n_fake = np.bincount(inv, weights=y.astype(np.float64), minlength=ids.size)
  mixed = (n_fake > 0) & (n_fake < counts)
  if mixed.any():
    j = int(np.flatnonzero(mixed)[0])
    raise MetricsError(
        f"video {ids[j].item()!r} has inconsistent labels: {int(n_fake[j])} of its {int(counts[j])} frames "
        f"are fake ({int(mixed.sum())} such video(s)); a video must be all real or all fake")
  return {"ids": ids, "p_fake": p_vid, "is_fake": n_fake > 0, "n_frames": counts}


def video_metrics(p_fake: Any, is_fake: Any, video_ids: Any, threshold: float = 0.5) -> dict[str, float]:
  """``frame_metrics`` of the per-video mean probabilities; ``n`` counts videos.

  >>> video_metrics([0.2, 0.4, 0.9, 0.7], [0, 0, 1, 1], ["a", "a", "b", "b"])["auc"]
  1.0
  """
  v = aggregate_videos(p_fake, is_fake, video_ids)
  out = _metrics(v["p_fake"], v["is_fake"], threshold, "video_metrics")
  out["n_frames"] = int(v["n_frames"].sum())
  return out


def node_aucs(marginals: Any, y: Any, mask: Any, node_names: Sequence[str]) -> dict[str, dict[str, float]]:
  """Per-node AUC over observed entries only.

  Args:
    marginals: (N, n) node marginals P(y_k = 1).
    y: (N, n) 0/1 labels; entries where ``mask`` is 0 are ignored whatever they hold.
    mask: (N, n) 1 where the label is observed.
    node_names: n names.
  Returns:
    {name: {"auc", "n", "n_pos"}}; ``auc`` is NaN for a node with no observed entry
    or with a single observed class.
  """
  m = np.asarray(marginals, np.float64)
  names = list(node_names)
  if m.ndim != 2 or m.shape[1] != len(names):
    raise MetricsError(f"marginals must have shape (N, {len(names)}) for nodes {names}, got {m.shape}")
  y = np.asarray(y, np.float64)
  mask = np.asarray(mask)
  for what, a in (("y", y), ("mask", mask)):
    if a.shape != m.shape:
      raise MetricsError(f"{what} must have the shape of marginals {m.shape}, got {a.shape}")
  obs = mask.astype(bool)
  out = {}
  for k, name in enumerate(names):
    sel = obs[:, k]
    yk, mk = y[sel, k], m[sel, k]
    if not np.isfinite(mk).all():
      raise MetricsError(f"marginals of node {name!r} contain NaN/inf")
    if not np.isin(yk, (0.0, 1.0)).all():
      raise MetricsError(f"labels y of node {name!r} must be 0/1 where observed")
    n_pos = int(yk.sum())
    auc = float("nan")
    if 0 < n_pos < yk.size:
      auc = float(skm.roc_auc_score(yk, mk))
    out[name] = {"auc": auc, "n": int(yk.size), "n_pos": n_pos}
  return out


def evaluate_predictions(
    p_fake: Any,
    is_fake: Any,
    video_ids: Any = None,
    *,
    marginals: Any = None,
    y: Any = None,
    mask: Any = None,
    node_names: Sequence[str] | None = None,
    threshold: float = 0.5,
) -> dict[str, Any]:
  """All metrics of one test set: {"frame": .., "video": .. or None, "nodes": .. or None}.

  ``video`` needs ``video_ids``; ``nodes`` needs ``marginals``, ``y``, ``mask`` and
  ``node_names`` (it is left out when none of the auxiliary labels is observed).
  """
  out: dict[str, Any] = {"frame": frame_metrics(p_fake, is_fake, threshold), "video": None, "nodes": None}
  if video_ids is not None:
    out["video"] = video_metrics(p_fake, is_fake, video_ids, threshold)
  if marginals is not None:
    if y is None or mask is None or node_names is None:
      raise MetricsError("per-node AUCs need marginals, y, mask and node_names together")
    out["nodes"] = node_aucs(marginals, y, mask, node_names)
  return out


# ----------------------------------------------------------------- reporting
_COLUMNS = (
    ("frame AUC", ("frame", "auc")), ("video AUC", ("video", "auc")),
    ("ACC", ("frame", "acc")), ("EER", ("frame", "eer")), ("AP", ("frame", "ap")),
)


def _get(r: Mapping[str, Any], path: tuple[str, str]) -> float:
  d = r.get(path[0])
  if not d:
    return float("nan")
  v = d.get(path[1], float("nan"))
  return float("nan") if v is None else float(v)


def _fmt(v: float) -> str:
  return "n/a" if not math.isfinite(v) else f"{100 * v:.2f}"


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """A Markdown table, one row per test set plus a mean row; metrics in percent.

  ``results`` maps test-set name -> ``evaluate_predictions`` output. The mean row
  averages the finite entries of each column (n/a where none is finite).
  """
  if not results:
    raise MetricsError("results_table needs at least one test set")
  head = ["test set"] + [c for c, _ in _COLUMNS] + ["frames", "videos"]
  lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
  cols = [[] for _ in _COLUMNS]
  for name, r in results.items():
    vals = [_get(r, path) for _, path in _COLUMNS]
    for c, v in zip(cols, vals):
      c.append(v)
    n_frames = (r.get("frame") or {}).get("n", "")
    n_videos = (r.get("video") or {}).get("n", "")
    lines.append("| " + " | ".join([str(name)] + [_fmt(v) for v in vals] + [str(n_frames), str(n_videos)]) + " |")
  means = []
  for c in cols:
    finite = [v for v in c if math.isfinite(v)]
    means.append(sum(finite) / len(finite) if finite else float("nan"))
  lines.append("| " + " | ".join(["**mean**"] + [_fmt(v) for v in means] + ["", ""]) + " |")
  return "\n".join(lines) + "\n"


def to_jsonable(x: Any) -> Any:
  """numpy/jax scalars and arrays -> Python; NaN/inf -> None (strict JSON)."""
  if isinstance(x, Mapping):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, (str, bool)) or x is None:
    return x
  if isinstance(x, (int, np.integer)) and not isinstance(x, np.bool_):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  if hasattr(x, "__array__") or isinstance(x, float):
    a = np.asarray(x)
    if a.ndim:
      return [to_jsonable(v) for v in a.tolist()]
    v = a.item()
    if isinstance(v, float) and not math.isfinite(v):
      return None
    return v
  return x


def write_results(directory: str | os.PathLike, results: Mapping[str, Mapping[str, Any]],
                  name: str = "results") -> tuple[str, str]:
  """Writes ``{name}.json`` (NaN as null) and ``{name}.md`` (``results_table``).

  Returns the two paths.
  """
  os.makedirs(directory, exist_ok=True)
  jpath = os.path.join(directory, f"{name}.json")
  mpath = os.path.join(directory, f"{name}.md")
  with open(jpath, "w") as f:
    json.dump(to_jsonable(results), f, indent=2, allow_nan=False)
    f.write("\n")
  with open(mpath, "w") as f:
    f.write(results_table(results))
  return jpath, mpath


def plot_roc(curves: Mapping[str, tuple[Any, Any]], path: str | os.PathLike, title: str = "ROC") -> str:
  """ROC curves of several score sets in one PNG, AUC in the legend.

  ``curves`` maps name -> (p_fake, is_fake). A single-class set cannot have a curve:
  it is left out with a warning. Uses matplotlib's Agg canvas (no display needed).
  """
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure

  fig = Figure(figsize=(5, 5), dpi=100)
  FigureCanvasAgg(fig)
  ax = fig.add_subplot(1, 1, 1)
  ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1)
  for name, (p, y) in curves.items():
    p = _as_scores(p, f"p_fake of {name!r}")
    y = _as_labels(y, p.size, f"is_fake of {name!r}")
    if y.all() or not y.any():
      warnings.warn(f"plot_roc: {name!r} has a single class; no ROC curve drawn", UserWarning, stacklevel=2)
      continue
    fpr, tpr, _ = skm.roc_curve(y, p)
    ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} (AUC = {100 * skm.roc_auc_score(y, p):.2f}%)")
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.set_xlabel("false positive rate")
  ax.set_ylabel("true positive rate")
  ax.set_title(title)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="lower right", fontsize="small")
  fig.tight_layout()
  d = os.path.dirname(os.fspath(path))
  if d:
    os.makedirs(d, exist_ok=True)
  fig.savefig(path, format="png")
  return os.fspath(path)


# ----------------------------------------------------------------- streaming
class Accumulator:
  """Collects per-batch predictions on the host; ``result()`` evaluates them.

  Args:
    node_names: node names (e.g. ``hierarchy.nodes``); needed for per-node AUCs.
    root: index of the primary node whose marginal is P(fake).
    threshold: ACC threshold.

  ``add`` takes (B, n) marginals (numpy or jax), optional (B, n) ``y``/``mask``,
  (B,) ``is_fake`` (taken from ``y[:, root]`` when omitted), (B,) ``video_index``
  and (B,) ``valid`` (False rows, e.g. padding of the last batch, are dropped).
  """

  def __init__(self, node_names: Sequence[str] | None = None, root: int = 0, threshold: float = 0.5):
    self.node_names = None if node_names is None else tuple(node_names)
    self.root = root
    self.threshold = threshold
    self.reset()

  def reset(self) -> None:
    self._parts: dict[str, list[np.ndarray]] = {k: [] for k in ("marginals", "y", "mask", "is_fake", "video")}
    self._n = 0
    self._given: frozenset[str] | None = None

  def __len__(self) -> int:
    return self._n

  def add(self, marginals: Any, y: Any = None, mask: Any = None, is_fake: Any = None,
          video_index: Any = None, valid: Any = None) -> None:
    m = np.asarray(marginals, np.float32)
    if m.ndim != 2:
      raise MetricsError(f"Accumulator.add: marginals must be (B, n), got shape {m.shape}")
    b = m.shape[0]
    if self.node_names is not None and m.shape[1] != len(self.node_names):
      raise MetricsError(f"Accumulator.add: marginals have {m.shape[1]} nodes, expected {len(self.node_names)}")
    keep = np.ones(b, bool) if valid is None else np.asarray(valid).astype(bool).reshape(-1)
    if keep.shape != (b,):
      raise MetricsError(f"Accumulator.add: valid must have shape ({b},), got {keep.shape}")
    if is_fake is None:
      if y is None:
        raise MetricsError("Accumulator.add needs is_fake or y")
      is_fake = np.asarray(y)[:, self.root]
    fields = {"marginals": m, "is_fake": np.asarray(is_fake).reshape(-1)}
    for k, v in (("y", y), ("mask", mask), ("video", video_index)):
      if v is not None:
        fields[k] = np.asarray(v)
    given = frozenset(fields)
    if self._given is not None and given != self._given:
      diff = sorted(given ^ self._given)
      raise MetricsError(f"Accumulator.add: {diff} given for some batches but not others; give each always or never")
    for k, v in fields.items():
      if v.shape[0] != b:
        raise MetricsError(f"Accumulator.add: {k} has {v.shape[0]} rows, marginals have {b}")
    self._given = given
    for k, v in fields.items():
      self._parts[k].append(v[keep])
    self._n += int(keep.sum())

  def arrays(self) -> dict[str, np.ndarray | None]:
    """The concatenated host arrays (for gathering across processes)."""
    return {k: (np.concatenate(v) if v else None) for k, v in self._parts.items()}

  def result(self) -> dict[str, Any]:
    """``evaluate_predictions`` of everything added so far."""
    if not self._n:
      raise MetricsError("Accumulator.result: no (valid) predictions were added")
    a = self.arrays()
    nodes_ok = a["y"] is not None and a["mask"] is not None and self.node_names is not None
    return evaluate_predictions(
        a["marginals"][:, self.root], a["is_fake"], a["video"],
        marginals=a["marginals"] if nodes_ok else None,
        y=a["y"] if nodes_ok else None, mask=a["mask"] if nodes_ok else None,
        node_names=self.node_names if nodes_ok else None, threshold=self.threshold)
