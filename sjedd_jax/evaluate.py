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
import jax
from absl import app, flags
from ml_collections import config_flags

from sjedd_jax import cli, inference, metrics as metrics_lib
from sjedd_jax.config import ConfigError
from sjedd_jax.data import datasets
from sjedd_jax.evaluator import Evaluator, write_report

def define_flags(fv: flags.FlagValues = flags.FLAGS) -> None:
  """The CLI's flags, defined on demand (see ``sjedd_jax.train.define_flags``)."""
  config_flags.DEFINE_config_file("config", None, "The training config.", lock_config=True, flag_values=fv)
  flags.DEFINE_string("workdir", None, "The training workdir (checkpoints); results go here.", flag_values=fv)
  flags.DEFINE_string("checkpoint", "best", "best, latest, or an exported model directory.", flag_values=fv)
  flags.DEFINE_string("out", None, "Where to write results (default: --workdir).", flag_values=fv)


def check_output(out: str) -> None:
  """The results directory: created if missing, and writable, before any evaluation runs."""
  try:
    os.makedirs(out, exist_ok=True)
  except OSError as e:
    raise ConfigError(f"cannot create the output directory {out!r} ({e.strerror})") from None
  if not os.access(out, os.W_OK):
    raise ConfigError(f"the output directory {out!r} is not writable")


def check_test_sets(config, data_dir: str) -> None:
  """Every test set prepared (a manifest in its directory), checked before evaluating any."""
  from sjedd_jax.data import manifest  # pylint: disable=g-import-not-at-top
  missing = [f"{name}={d}" for name, (d, _, _) in datasets.test_sets(config, data_dir).items()
             if not os.path.exists(os.path.join(d, manifest.MANIFEST))]
  if missing:
    raise ConfigError(f"test set(s) without a {manifest.MANIFEST}: {', '.join(missing)} (config.test_sets)")


def main(argv, fv: flags.FlagValues = flags.FLAGS):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments {argv[1:]}")
  if fv.workdir is None:
    raise app.UsageError("--workdir is required")
  if not fv["config"].present:
    raise app.UsageError("--config is required")
  config, workdir = cli.config_value(fv["config"]), fv.workdir
  out = fv.out or workdir
  if not os.path.isdir(os.path.expanduser(workdir)):
    raise FileNotFoundError(f"--workdir {workdir!r} does not exist (give the training workdir with the checkpoints)")
  data_dir = datasets.dataset_dir(config)
  check_test_sets(config, data_dir)
  check_output(out)
  detector, variables = inference.load(config=config, workdir=workdir, checkpoint=fv.checkpoint)
  evaluator = Evaluator(detector)
  results, curves = {}, {}
  for name, (d, split_name, sources) in datasets.test_sets(config, data_dir).items():
    cfg = datasets.data_config(config, detector, d, split_name, train=False, sources=sources)
    results[name], curves[name] = evaluator.run(cfg, variables, return_scores=True)
  if jax.process_index() == 0:
    write_report(out, results, curves)
    print(metrics_lib.results_table(results))


if __name__ == "__main__":
  define_flags()
  cli.run(main)
