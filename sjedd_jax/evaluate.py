r"""Evaluates a trained model: ``python -m sjedd_jax.evaluate --config CFG --workdir DIR``.

Frame-level and video-level AUC (mean frame probability per video), ACC, EER, AP
and per-node AUCs, for the config's test split plus every extra test set in
``config.test_sets`` ("name=dir,..."; cross-dataset, spec section 8) and, with
``--cross_manipulation``, the held-out methods of the Table III protocol. Writes
``DIR/results.json``, ``DIR/results.md`` and ``DIR/roc.png``.

``--checkpoint`` picks the weights: ``best`` (default: best validation AUC),
``latest``, or a path to an exported model directory.
"""

from __future__ import annotations

import os
import sys
import jax
from absl import app, flags
from ml_collections import config_flags

from sjedd_jax import inference, metrics as metrics_lib
from sjedd_jax.config import ConfigError
from sjedd_jax.data import datasets
from sjedd_jax.evaluator import Evaluator, write_report

_CONFIG = config_flags.DEFINE_config_file("config", None, "The training config.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "The training workdir (checkpoints); results go here.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", "best", "best, latest, or an exported model directory.")
_OUT = flags.DEFINE_string("out", None, "Where to write results (default: --workdir).")


def main(argv):
  del argv
  config, workdir = _CONFIG.value, _WORKDIR.value
  if workdir is None:
    raise app.UsageError("--workdir is required")
  out = _OUT.value or workdir
  try:
    data_dir = datasets.dataset_dir(config)
    detector, variables = inference.load(config=config, workdir=workdir, checkpoint=_CHECKPOINT.value)
  except (ConfigError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  evaluator = Evaluator(detector)
  results, curves = {}, {}
  for name, (d, split_name, sources) in datasets.test_sets(config, data_dir).items():
    cfg = datasets.data_config(config, detector, d, split_name, train=False, sources=sources)
    results[name], curves[name] = evaluator.run(cfg, variables, return_scores=True)
  if jax.process_index() == 0:
    write_report(out, results, curves)
    print(metrics_lib.results_table(results))


if __name__ == "__main__":
  flags.mark_flag_as_required("config")
  app.run(main)
