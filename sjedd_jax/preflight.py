"""Checks before any work starts: everything a run needs, named at once, with how to get it.

``check(config)`` fails with one ``ConfigError`` listing every problem found
(the detector, its label graph and weights, the data directory), so a run never
stops hours in for something that was missing from the start.
"""

from __future__ import annotations

from sjedd_jax import detectors
from sjedd_jax.config import ConfigError
from sjedd_jax.data import datasets


def check(config) -> None:
  """Raises ``ConfigError`` naming everything missing (detector, data and weights) before any work starts."""
  problems = []
  try:
    pkg = detectors.get(config.get("detector", ""))
  except ConfigError as e:
    raise ConfigError(f"cannot start: {e}") from None
  try:
    pkg.make(config)
  except ConfigError as e:
    problems.append(str(e))
  if config.data.kind == "manifest":
    try:
      datasets.dataset_dir(config)
    except ConfigError as e:
      problems.append(f"data: {e}")
  check_weights = getattr(pkg, "check_weights", None)
  if check_weights is not None:
    problems += check_weights(config)
  if problems:
    raise ConfigError("cannot start:\n  - " + "\n  - ".join(problems))
