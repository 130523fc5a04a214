"""Streaming evaluation of a model over eval pipelines (used by train, evaluate and benchmarks)."""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from sjedd_jax import metrics as metrics_lib, train_step as ts
from sjedd_jax.data import pipeline


class Evaluator:
  """Streams an eval pipeline through a jitted, data-parallel marginals function."""

  def __init__(self, split_model, hierarchy, mesh=None):
    self.split = split_model
    self.hierarchy = hierarchy
    self.mesh = mesh if mesh is not None else ts.data_mesh()
    rep, data = ts.replicated(self.mesh), ts.batch_sharding(self.mesh)
    self._fn = jax.jit(lambda p, images: hierarchy.marginals(split_model.scores_fn(p, images).astype(np.float32)),
                       in_shardings=(rep, data), out_shardings=data)

  def marginals(self, params, images: np.ndarray) -> np.ndarray:
    out = self._fn(params, ts.global_batch({"image": images}, self.mesh, keys=("image",))["image"])
    if jax.process_count() > 1:
      return np.asarray(multihost_utils.process_allgather(out, tiled=True))
    return np.asarray(out)

  def run(self, data_cfg: pipeline.DataConfig, params=None, progress: bool = True,
          return_scores: bool = False):
    """Metrics on one split/dataset: {"frame", "video", "nodes"} (``metrics.evaluate_predictions``).

    With ``return_scores`` also ``(p_fake, is_fake)`` for ROC curves.
    """
    params = self.split.params if params is None else params
    data = pipeline.load(data_cfg)
    acc = metrics_lib.Accumulator(node_names=self.hierarchy.nodes)
    it = pipeline.eval_iterator(data_cfg, data)
    for batch in tqdm(it, desc=f"eval {os.path.basename(data_cfg.data_dir.rstrip('/'))}/{data_cfg.split}",
                      unit="batch", disable=not progress, leave=False):
      m = self.marginals(params, batch["image"])
      if jax.process_count() > 1:
        batch = {k: np.asarray(multihost_utils.process_allgather(batch[k], tiled=True))
                 for k in ("y", "mask", "is_fake", "video", "valid")}
      acc.add(m, y=batch["y"], mask=batch["mask"], is_fake=batch["is_fake"], video_index=batch["video"],
              valid=batch["valid"])
    results = acc.result()
    if return_scores:
      a = acc.arrays()
      return results, (a["marginals"][:, 0], a["is_fake"])
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
