"""Streaming evaluation of any detector over eval pipelines (used by train, evaluate, predict and benchmarks).

The detector's ``predict`` runs jitted and data-parallel over every device; the
host keeps P(fake), the labels and whatever else the detector returned, and at
the end computes the shared frame/video metrics plus the detector's own
(``Detector.eval_metrics``: SJEDD's per-node AUCs, localisation, sequences).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from sjedd_jax import metrics as metrics_lib, train_step as ts
from sjedd_jax.data import pipeline
from sjedd_jax.detectors.interface import Detector, Variables

_HOST_KEYS = ("valid", "index")   # the rest (is_fake, video, the label_fn's arrays) reach eval_metrics


class Evaluator:
  """Streams an eval pipeline through the detector's jitted, data-parallel ``predict``."""

  def __init__(self, detector: Detector, mesh=None):
    self.detector = detector
    self.mesh = mesh if mesh is not None else ts.data_mesh()
    rep, data = ts.replicated(self.mesh), ts.batch_sharding(self.mesh)
    options = detector.compiler_options
    self._fn = jax.jit(detector.predict, in_shardings=(rep, rep, data), out_shardings=data,
                       compiler_options=dict(options) if options else None)

  def predict(self, variables: Variables, images: np.ndarray) -> dict[str, np.ndarray]:
    """(B, S, S, 3) model inputs -> the detector's outputs as host arrays (B must divide over devices)."""
    x = ts.global_batch({"image": images}, self.mesh, keys=("image",))["image"]
    out = self._fn(variables.params, variables.state, x)
    if jax.process_count() > 1:
      return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in out.items()}
    return {k: np.asarray(v) for k, v in out.items()}

  def run(self, data_cfg: pipeline.DataConfig, variables: Variables, progress: bool = True,
          return_scores: bool = False):
    """Metrics on one split/dataset: {"frame", "video", ...the detector's}.

    With ``return_scores`` also ``(p_fake, is_fake)`` for ROC curves.
    """
    data = pipeline.load(data_cfg)
    parts: dict[str, list[np.ndarray]] = {}
    it = pipeline.eval_iterator(data_cfg, data)
    for batch in tqdm(it, desc=f"eval {os.path.basename(data_cfg.data_dir.rstrip('/'))}/{data_cfg.split}",
                      unit="batch", disable=not progress, leave=False):
      out = self.predict(variables, batch["image"])
      labels = {k: v for k, v in batch.items() if k != "image"}
      if jax.process_count() > 1:
        labels = {k: np.asarray(multihost_utils.process_allgather(v, tiled=True)) for k, v in labels.items()}
      keep = np.asarray(labels["valid"]).astype(bool)
      for k, v in {**labels, **{f"out/{k}": v for k, v in out.items()}}.items():
        parts.setdefault(k, []).append(np.asarray(v)[keep])
    a = {k: np.concatenate(v) for k, v in parts.items()}
    if not a or not len(a["valid"]):
      raise metrics_lib.MetricsError(f"{data_cfg.data_dir}/{data_cfg.split}: no examples to evaluate")
    p_fake = a["out/p_fake"]
    results = metrics_lib.evaluate_predictions(p_fake, a["is_fake"], a["video"])
    outputs = {k[4:]: v for k, v in a.items() if k.startswith("out/")}
    labels = {k: v for k, v in a.items() if not k.startswith("out/") and k not in _HOST_KEYS}
    extra = self.detector.eval_metrics(outputs, labels) or {}
    results.update(extra)
    if return_scores:
      return results, (p_fake, a["is_fake"])
    return results


def write_report(directory: str, results: dict[str, dict], curves: dict[str, tuple] | None = None) -> None:
  """results.json + results.md (one row per test set, then per-node AUCs) and roc.png."""
  _, md_path = metrics_lib.write_results(directory, results)
  if curves:
    metrics_lib.plot_roc(curves, os.path.join(directory, "roc.png"))
  nodes = {name: r.get("nodes") for name, r in results.items() if r.get("nodes")}
  if nodes:
    names = list(next(iter(nodes.values())))
    lines = ["", "Per-node AUC (%):", "", "| test set | " + " | ".join(names) + " |",
             "|---|" + "---:|" * len(names)]
    for set_name, n in nodes.items():
      cells = [("n/a" if v["auc"] is None or v["auc"] != v["auc"] else f"{100 * v['auc']:.2f}")
               for v in (n[k] for k in names)]
      lines.append(f"| {set_name} | " + " | ".join(cells) + " |")
    with open(md_path, "a") as f:
      f.write("\n".join(lines) + "\n")
