"""From a config to data: the dataset directory, the named test sets, and a pipeline config per split.

Shared by ``train``, ``evaluate``, ``predict`` and the benchmarks, so they all read
a config's data section the same way; the detector supplies what depends on it
(its ``label_fn`` and its backbone's normalisation).
"""

from __future__ import annotations

import os

import jax
import ml_collections

from sjedd_jax.config import ConfigError
from sjedd_jax.data import manifest
from sjedd_jax.data import pipeline
from sjedd_jax.data import sources as sources_lib


def dataset_dir(config: ml_collections.ConfigDict, progress: bool = True) -> str:
  """The prepared dataset directory: generated ("synthetic": the face world, with
  ``data.synthetic.oracle_masks`` also its true forgery masks; "synthetic_seq": the
  sequential-edit world of ``data.synthetic_seq``) or checked ("manifest")."""
  kind = config.data.kind
  if kind == "synthetic_seq":  # the sequential-edit world (sequence detectors)
    from sjedd_jax.data import synthetic_seq  # pylint: disable=g-import-not-at-top
    return synthetic_seq.ensure_seq_synthetic(config.data.cache_dir, progress=progress,
                                              **dict(config.data.get("synthetic_seq") or {}))
  if kind == "synthetic":
    from sjedd_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    params = dict(config.data.synthetic)
    expand = params.pop("expand", True)
    if params.pop("oracle_masks", False):  # the world's true forgery masks, named in its manifest
      d = synthetic.ensure_synthetic(config.data.cache_dir, expand=expand, progress=progress, **params)
      return synthetic.ensure_oracle_masks(d, progress=progress)
    if expand and expansion_mode(config) == "xray":  # Table XI: the originals + X-ray-style blends
      from sjedd_jax.data import expand as expand_lib  # pylint: disable=g-import-not-at-top
      d = synthetic.ensure_synthetic(config.data.cache_dir, expand=False, progress=progress, **params)
      out = d.rstrip("/") + "_xray"
      # One process: forking a pool after JAX has started its threads can deadlock.
      expand_lib.expand(d, out, mode="xray", seed=params.get("seed", 0), progress=progress, workers=1)
      return out
    return synthetic.ensure_synthetic(config.data.cache_dir, expand=expand, progress=progress, **params)
  if kind == "manifest":
    d = os.path.expanduser(config.data.dir or "")
    if not d:
      raise ConfigError(
          "config.data.dir is empty: give the prepared (expanded) FF++ directory, e.g. "
          "--config.data.dir=/data/ffpp_expanded. Make it with scripts/preprocess_ffpp.py on a local "
          "FF++ tree, then scripts/expand_dataset.py (see docs/data.md). FF++ cannot be downloaded "
          "by this tool: request access at https://github.com/ondyari/FaceForensics.")
    if not os.path.exists(os.path.join(d, manifest.MANIFEST)):
      raise ConfigError(
          f"no {manifest.MANIFEST} in config.data.dir={d!r} (looked for "
          f"{os.path.join(d, manifest.MANIFEST)}). Prepare it with scripts/preprocess_ffpp.py and "
          "scripts/expand_dataset.py (docs/data.md).")
    if expansion_mode(config) == "xray" and "expansion_xray" not in manifest.read_metadata(d):
      raise ConfigError(
          f"config.data.expansion_mode='xray' but {d} holds no X-ray-style expansion (no 'expansion_xray' in "
          f"its {manifest.METADATA}); make one with scripts/expand_dataset.py --data ORIGINALS --out DIR "
          "--mode xray and point config.data.dir at DIR")
    return d
  raise ConfigError(f"config.data.kind={kind!r}; expected 'synthetic', 'synthetic_seq' or 'manifest'")


def expansion_mode(config) -> str:
  mode = config.data.get("expansion_mode", "regions")
  if mode not in ("regions", "xray"):
    raise ConfigError(f"config.data.expansion_mode={mode!r}; expected 'regions' (spec 7) or 'xray' (Table XI)")
  return mode


def _sources(value) -> list[str] | None:
  if value is None or value == "":
    return None
  if isinstance(value, str):
    return [s.strip() for s in value.split(",") if s.strip()]
  return list(value)


def train_sources(config) -> list[str] | None:
  return _sources(config.data.get("train_sources"))


def data_config(config: ml_collections.ConfigDict, detector, data_dir: str, split: str, *,
                train: bool, sources: list[str] | None = None) -> pipeline.DataConfig:
  """A pipeline config for one split, with the detector's labels and normalisation.

  Batch sizes in the config are global; each process reads its share. With
  ``config.data.train_sources`` (cross-manipulation, Table III) the training and
  validation splits keep real faces, those methods and the expansion.
  Evaluation (``train=False``) leaves the expansion's images out: AUCs are on the
  original data.
  """
  if sources is None and split in ("train", "val") and train_sources(config) is not None:
    sources = [sources_lib.REAL] + train_sources(config) + list(sources_lib.EXPANSION_SOURCES)
  exclude = () if train and not config.data.get("exclude_expansion", False) else sources_lib.EXPANSION_SOURCES
  return pipeline.DataConfig(
      data_dir=data_dir, split=split, sources=sources, exclude_sources=exclude,
      image_size=config.data.image_size,
      batch_size=(config.batch_size if train else config.eval_batch_size) // jax.process_count(),
      label_fn=detector.label_fn, mean=tuple(detector.mean), std=tuple(detector.std),
      transform=detector.transform, image_keys=tuple(detector.image_keys),
      perturb_probability=config.data.perturb_probability if train else 0.0,
      hflip=bool(train and config.data.get("hflip", False)),
      seed=config.seed,
      workers=config.data.workers,
      skip_unreadable=config.data.skip_unreadable,
      balance_real=bool(train and config.data.get("balance_real", False)),
  )


def test_sets(config: ml_collections.ConfigDict, data_dir: str) -> dict[str, tuple[str, str, list[str] | None]]:
  """Named test sets ``name -> (directory, split, sources or None)``.

  The main dataset's test split; with ``config.data.train_sources`` also each
  held-out method (with the real test faces) for the cross-manipulation protocol;
  then every extra "name=dir" of ``config.test_sets`` (cross-dataset).
  """
  out = {"test": (data_dir, "test", None)}
  trained = train_sources(config)
  if trained is not None:
    for method in sources_lib.FFPP_METHODS:
      if method not in trained:
        out[f"held_out/{method}"] = (data_dir, "test", [sources_lib.REAL, method])
  extra = config.get("test_sets")
  if extra:
    for item in extra.split(","):
      if "=" not in item:
        raise ConfigError(f"config.test_sets item {item!r} is not name=directory")
      name, d = (s.strip() for s in item.split("=", 1))
      out[name] = (os.path.expanduser(d), "test", None)
  return out
