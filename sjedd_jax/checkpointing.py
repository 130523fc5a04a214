"""Training checkpoints with orbax: state, input-iterator states and metadata, saved together.

Layout under ``workdir``:

    ckpt/<step>/   the latest ``keep`` checkpoints (resume from the newest)
    best/<step>/   the one with the best validation AUC (model selection)

Each checkpoint holds ``state`` (params, both optimiser states, lambda, step),
``data`` (the train and bi-level validation iterator states, JSON) and ``meta``
(JSON: the config, the seed, the metrics at that step). Saves are asynchronous
and atomic (orbax writes to a temporary directory and renames on commit), so a
killed process leaves only complete checkpoints behind.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def _manager(directory: str, *, keep: int, best_metric: str | None = None) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep,
      best_fn=(lambda m: m[best_metric]) if best_metric else None,
      best_mode="max",
      keep_checkpoints_without_metrics=best_metric is None,
      enable_async_checkpointing=True,
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=("state", "data", "meta"))


def _flat(tree) -> dict[str, Any]:
  """{path string: leaf}: a flat, named form that survives optax's empty states."""
  return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


class Checkpointer:
  """Latest-N plus best-by-metric checkpoints of a training run."""

  def __init__(self, workdir: str, *, keep: int = 3, best_metric: str = "val/frame_auc"):
    self.best_metric = best_metric
    self.latest = _manager(os.path.join(workdir, "ckpt"), keep=keep)
    self.best = _manager(os.path.join(workdir, "best"), keep=1, best_metric=best_metric)
    self._best_value: float | None = None

  @staticmethod
  def _args(state, data: dict, meta: dict) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(_flat(state)), data=ocp.args.JsonSave(data),
                              meta=ocp.args.JsonSave(meta))

  def save(self, step: int, state, data: dict, meta: dict, *, force: bool = False) -> bool:
    return self.latest.save(step, args=self._args(state, data, meta), force=force)

  def best_value(self) -> float | None:
    """The metric of the kept best checkpoint (read from its ``meta``), or None."""
    if self._best_value is None:
      step = self.best.best_step()
      if step is not None:
        meta = self.best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())).meta
        self._best_value = meta.get("metrics", {}).get(self.best_metric)
    return self._best_value

  def save_best(self, step: int, state, data: dict, meta: dict, metrics: dict) -> bool:
    """Saves into ``best/`` if ``metrics[best_metric]`` beats the kept one."""
    value = metrics.get(self.best_metric)
    if value is None or value != value:  # missing or NaN
      return False
    prev = self.best_value()
    if prev is not None and prev >= value:
      return False
    meta = dict(meta, metrics={**meta.get("metrics", {}), self.best_metric: float(value)})
    self._best_value = float(value)
    return self.best.save(step, args=self._args(state, data, meta), metrics={self.best_metric: float(value)},
                          force=True)

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def restore(self, abstract_state, step: int | None = None, which: str = "latest") -> tuple[Any, dict, dict]:
    """Restores ``(state, data, meta)``; ``abstract_state`` gives structure, shapes and shardings."""
    mngr = self.latest if which == "latest" else self.best
    step = mngr.latest_step() if step is None and which == "latest" else step
    if step is None and which == "best":
      step = mngr.best_step()
    if step is None:
      raise FileNotFoundError(f"no {which} checkpoint in {mngr.directory}")
    flat = _flat(abstract_state)  # insertion order = leaf order (tree.map would sort the keys)
    abstract = {k: ocp.utils.to_shape_dtype_struct(v) for k, v in flat.items()}
    out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                     data=ocp.args.JsonRestore(), meta=ocp.args.JsonRestore()))
    leaves = [out.state[k] for k in flat]
    return jax.tree.unflatten(jax.tree.structure(abstract_state), leaves), out.data, out.meta

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    self.latest.close()
    self.best.close()
