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
    raise ConfigError("cannot start: " + "; ".join(problems))


MAX_LISTED = 8


def check_data(config, detector, data_dir: str, *, progress: bool = True, check_paths: bool = True) -> int:
  """The dataset checked before the first step: every manifest row parsed (types and labels, with
  file:line), every image (and forgery mask) it names present, every extra test set prepared.

  Fails with one ``ManifestError``/``ConfigError`` that lists what is wrong; returns the number of
  records checked. Images are not decoded here (a corrupt file is named when it is read, or skipped
  with ``data.skip_unreadable``).
  """
  import os  # pylint: disable=g-import-not-at-top
  from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  from sjedd_jax.data import manifest  # pylint: disable=g-import-not-at-top
  dirs = {data_dir: "data"}
  problems = []
  for name, (d, _, _) in datasets.test_sets(config, data_dir).items():
    if d not in dirs:
      if not os.path.exists(os.path.join(d, manifest.MANIFEST)):
        problems.append(f"test set {name!r}: no {manifest.MANIFEST} in {d!r} (config.test_sets)")
      else:
        dirs[d] = f"test set {name!r}"
  if problems:
    raise ConfigError("cannot start: " + "; ".join(problems))
  n = 0
  for d, what in dirs.items():
    records = manifest.read(d)          # parses every row: a bad one is named by file and line
    missing, labels = [], []
    path = os.path.join(d, manifest.MANIFEST)
    for i, rec in enumerate(tqdm(records, desc=f"check {what}", unit="record", disable=not progress,
                                 leave=False, mininterval=1.0), 1):
      if check_paths:
        for p in (rec.path, rec.forgery_mask):
          if p and not os.path.exists(os.path.join(d, p)):
            missing.append(f"{path}:{i}: {p}")
      if d == data_dir:
        try:
          detector.label_fn(rec)
        except (ValueError, KeyError, TypeError) as e:
          labels.append(f"{path}:{i} ({rec.path}): {e}")
    n += len(records)
    for kind, bad in (("missing file(s)", missing), ("record(s) whose label cannot be made", labels)):
      if bad:
        more = f" (and {len(bad) - MAX_LISTED} more)" if len(bad) > MAX_LISTED else ""
        raise manifest.ManifestError(f"{len(bad)} {kind} in {what} {d}: " + "; ".join(bad[:MAX_LISTED]) + more)
  return n
