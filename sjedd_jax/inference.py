"""A trained model for inference, from any source: an export, a workdir checkpoint, the release checkpoint.

``load(...)`` returns ``(Detector, Variables)``: the detector's pure functions and
its parameters and state, ready for ``Evaluator`` and ``predict``.
"""

from __future__ import annotations

import os

from sjedd_jax import checkpointing, detectors, optim, train_step as ts
from sjedd_jax.config import ConfigError


def abstract_train_state(config, detector, variables):
  """A TrainState with the run's structure (for restoring; values are not used)."""
  labels = detector.param_labels(variables.params) if detector.param_labels is not None else None
  opt = optim.make(config.optim, total_steps=1, steps_per_epoch=1, params=variables.params, labels=labels)
  weighting = ts.weighting_from_config(config, detector, steps_per_epoch=1)
  return ts.init_state(variables, opt.tx, weighting, seed=config.seed)


def from_checkpoint(config, workdir: str, which: str = "best"):
  """``(Detector, Variables)`` of a workdir's "best" or "latest" checkpoint."""
  workdir = os.path.expanduser(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir!r} does not exist (give the training workdir with the checkpoints)")
  sub = "best" if which == "best" else "ckpt"
  steps = [d for d in os.listdir(os.path.join(workdir, sub))] if os.path.isdir(os.path.join(workdir, sub)) else []
  if not any(d.isdigit() for d in steps):
    raise FileNotFoundError(f"no {which} checkpoint in {workdir} (looked in {os.path.join(workdir, sub)}); "
                            "train first, or pick --checkpoint=latest / an export directory")
  detector = detectors.make(config)
  variables = detector.init(config.seed)
  mesh = ts.data_mesh()
  ckpt = checkpointing.Checkpointer(workdir)
  try:
    abstract = ts.shard_state(abstract_train_state(config, detector, variables), mesh)
    state, _, _ = ckpt.restore(abstract, which=which)
  finally:
    ckpt.close()
  return detector, detectors.Variables(state.params, state.model_state)


def load(*, export: str | None = None, release: str | None = None, config=None, workdir: str | None = None,
         checkpoint: str = "best", dtype: str | None = None):
  """``(Detector, Variables)`` from exactly one model source.

  ``export``: a directory written by training (``WORKDIR/export``); ``release``:
  the SJEDD authors' checkpoint (``.pth`` or converted directory); ``config`` +
  ``workdir``: a training workdir's ``checkpoint`` ("best"/"latest", or a path to
  an export directory).
  """
  given = [n for n, v in (("--export", export), ("--release", release), ("--config", config)) if v]
  if len(given) != 1:
    raise ConfigError(
        f"give exactly one model source: --export DIR, --release PATH, or --config CFG --workdir DIR "
        f"(got {', '.join(given) or 'none'})")
  if export:
    return detectors.load_export(os.path.expanduser(export), dtype=dtype)
  if release:
    from sjedd_jax.detectors import sjedd  # pylint: disable=g-import-not-at-top
    path = os.path.expanduser(release)
    if not os.path.exists(path):
      raise FileNotFoundError(f"--release={release!r} does not exist")
    return sjedd.from_release_checkpoint(path, dtype=dtype)
  if checkpoint not in ("best", "latest"):
    return detectors.load_export(os.path.expanduser(checkpoint), dtype=dtype)
  if not workdir:
    raise ConfigError("--config needs --workdir (the training workdir with the checkpoints)")
  return from_checkpoint(config, workdir, checkpoint)
