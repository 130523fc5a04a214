"""The registered detectors, chosen by name from the config (``config.detector``), as big_vision picks models.

Each detector is one package ``sjedd_jax/detectors/<name>/`` whose ``__init__``
provides:

* ``PAPER``, ``BACKBONE``: one line each, for tables (``scripts/compare_detectors.py``);
* ``defaults(config)``: adds the detector's own fields to a ``base_config`` (its
  ``config.model`` and any detector-specific keys);
* ``make(config) -> Detector``: the tuple of pure functions (``interface.Detector``);
* ``load_export(path, dtype) -> (Detector, Variables)``: a model written by its ``export``;
* ``EXPORT_MARKER``: the file its exports hold (``detector.json`` names the detector too).

Adding a detector is one folder plus one entry in ``NAMES`` (docs/architecture.md).
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
from types import ModuleType
from typing import Callable

from sjedd_jax.detectors.interface import Detector, ModuleHandle, Variables

__all__ = ["NAMES", "Detector", "ModuleHandle", "Variables", "defaults", "get", "load_export", "make",
           "EXPORT_META"]

# name -> package. Imported lazily, so a run pulls in only its own detector's code.
NAMES = {
    "sjedd": "sjedd_jax.detectors.sjedd",
    "jedd": "sjedd_jax.detectors.jedd",
    "lisiam": "sjedd_jax.detectors.lisiam",
    "mc_lcr": "sjedd_jax.detectors.mc_lcr",
    "mil_ranking": "sjedd_jax.detectors.mil_ranking",
}

EXPORT_META = "detector.json"   # {"detector": name, ...} in every export directory


def get(name: str) -> ModuleType:
  """The detector package registered as ``name``."""
  from sjedd_jax.config import ConfigError  # pylint: disable=g-import-not-at-top
  if not name:
    raise ConfigError(f"config.detector is empty: name one of {sorted(NAMES)} "
                      "(e.g. config_lib.base_config('sjedd') in the config file)")
  if name not in NAMES:
    raise ConfigError(f"config.detector={name!r} is not a registered detector; expected one of {sorted(NAMES)}")
  return importlib.import_module(NAMES[name])


def defaults(name: str, config) -> None:
  """Adds detector ``name``'s defaults to ``config`` (in place)."""
  get(name).defaults(config)


def make(config) -> Detector:
  """The detector of ``config.detector``, built from ``config``."""
  return get(config.detector).make(config)


def load_export(path: str, dtype: str | None = None) -> tuple[Detector, Variables]:
  """A model exported by training (``WORKDIR/export``): its detector and variables, no config needed."""
  path = os.path.expanduser(os.fspath(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"export directory {path!r} does not exist")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"{path!r} is a file, not an export directory (WORKDIR/export)")
  meta_path = os.path.join(path, EXPORT_META)
  name = None
  if os.path.exists(meta_path):
    try:
      with open(meta_path) as f:
        name = json.load(f)["detector"]
    except (OSError, ValueError, KeyError, TypeError) as e:
      raise FileNotFoundError(f"{meta_path}: not a valid export description ({type(e).__name__}: {e})") from None
  else:  # exports written before detector.json existed
    for candidate in NAMES:
      marker = getattr(get(candidate), "EXPORT_MARKER", None)
      if marker and os.path.exists(os.path.join(path, marker)):
        name = candidate
        break
  if name is None:
    markers = [EXPORT_META] + [m for m in (getattr(get(n), "EXPORT_MARKER", None) for n in NAMES) if m]
    raise FileNotFoundError(f"{path}: not a model exported by sjedd_jax.train (none of {markers} there)")
  return get(name).load_export(path, dtype=dtype)


def read_export_meta(path: str, meta_name: str, what: str = "a model") -> dict:
  """The JSON description ``meta_name`` of the export ``path``, with a clear error naming the file."""
  meta_path = os.path.join(path, meta_name)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{path}: no {meta_name}; not {what} exported by sjedd_jax.train")
  try:
    with open(meta_path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise FileNotFoundError(f"{meta_path}: not a valid export description ({e})") from None


def write_export_meta(out_dir: str, name: str, **extra) -> None:
  with open(os.path.join(out_dir, EXPORT_META), "w") as f:
    json.dump({"detector": name, **extra}, f, indent=2, default=str)


def write_export(out_dir: str, name: str, write: Callable[[str], None], meta_name: str, meta: dict,
                 **detector_meta) -> str:
  """Writes an export directory atomically, on process 0 only: ``write(tmp)`` puts the weights
  into ``out_dir.tmp`` (made empty first; ``write`` may create it), then the JSON description
  ``meta_name`` and ``detector.json`` (``{"detector": name, **detector_meta}``) go beside them and
  ``out_dir.tmp`` replaces ``out_dir``. Returns ``out_dir``."""
  import jax  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return out_dir
  tmp = out_dir + ".tmp"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  write(tmp)
  os.makedirs(tmp, exist_ok=True)
  with open(os.path.join(tmp, meta_name), "w") as f:
    json.dump(meta, f, indent=2, default=str)
  write_export_meta(tmp, name, **detector_meta)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  return out_dir
