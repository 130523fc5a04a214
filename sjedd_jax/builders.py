"""Turning a config into objects: the dataset directory, pipeline configs, the model.

Shared by ``train``, ``evaluate``, ``predict`` and ``scripts/benchmark.py``, so
they all read a config the same way.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjedd_jax import hierarchy as hierarchy_lib
from sjedd_jax import labels as labels_lib
from sjedd_jax.data import manifest
from sjedd_jax.data import pipeline


class ConfigError(ValueError):
  """A config that cannot be run, with what is missing and how to get it."""


_WEIGHTS_HELP = (
    "Give a local CLIP checkpoint with --config.model.pretrained=PATH: a Hugging Face directory "
    "(config.json + model.safetensors, e.g. a saved openai/clip-vit-base-patch32), an OpenAI .pt file "
    "(ViT-B-32.pt), or a file made by scripts/convert_checkpoint.py. Weights cannot be downloaded at run time.")


def preflight(config: ml_collections.ConfigDict) -> None:
  """Fails at once, naming everything missing (data and weights), before any work starts."""
  problems = []
  try:
    hierarchy(config)
  except ConfigError as e:
    problems.append(f"label graph: {e}")
  if config.data.kind == "manifest":
    try:
      dataset_dir(config)
    except ConfigError as e:
      problems.append(f"data: {e}")
  m = config.model
  if m.pretrained and not os.path.exists(os.path.expanduser(m.pretrained)):
    problems.append(f"weights: config.model.pretrained={m.pretrained!r} does not exist. {_WEIGHTS_HELP}")
  elif not m.pretrained and m.get("require_pretrained", False):
    problems.append(f"weights: config.model.pretrained is empty and this config needs pretrained CLIP "
                    f"weights. {_WEIGHTS_HELP}")
  if problems:
    raise ConfigError("cannot start:\n  - " + "\n  - ".join(problems))


# ---------------------------------------------------------------------- data
def dataset_dir(config: ml_collections.ConfigDict, progress: bool = True) -> str:
  """The prepared dataset directory: generated (synthetic) or checked (manifest)."""
  kind = config.data.kind
  if kind == "synthetic":
    from sjedd_jax.data import synthetic  # pylint: disable=g-import-not-at-top
    params = dict(config.data.synthetic)
    expand = params.pop("expand", True)
    if expand and _expansion_mode(config) == "xray":  # Table XI: the originals + X-ray-style blends
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
    if _expansion_mode(config) == "xray" and "expansion_xray" not in manifest.read_metadata(d):
      raise ConfigError(
          f"config.data.expansion_mode='xray' but {d} holds no X-ray-style expansion (no 'expansion_xray' in "
          f"its {manifest.METADATA}); make one with scripts/expand_dataset.py --data ORIGINALS --out DIR "
          "--mode xray and point config.data.dir at DIR")
    return d
  raise ConfigError(f"config.data.kind={kind!r}; expected 'synthetic' or 'manifest'")


def _expansion_mode(config) -> str:
  mode = config.data.get("expansion_mode", "regions")
  if mode not in ("regions", "xray"):
    raise ConfigError(f"config.data.expansion_mode={mode!r}; expected 'regions' (spec 7) or 'xray' (Table XI)")
  return mode


# Images made by an expansion (left out of evaluation; ``exclude_expansion`` leaves them out of training).
EXPANSION_SOURCES = tuple(labels_lib.AUG_SOURCES) + ("xray",)


def label_table(config, nodes) -> dict[str, tuple[int, ...]] | None:
  """``config.data.label_table`` as rows over ``nodes`` ("" -> None: Table I via the manifest)."""
  spec = config.data.get("label_table", "")
  if not spec:
    return None
  from sjedd_jax.models import jedd  # pylint: disable=g-import-not-at-top
  try:
    return jedd.label_table(spec, nodes)
  except (jedd.JEDDError, OSError, ValueError) as e:
    raise ConfigError(f"config.data.label_table: {e}") from e


def _sources(value) -> list[str] | None:
  if value is None or value == "":
    return None
  if isinstance(value, str):
    return [s.strip() for s in value.split(",") if s.strip()]
  return list(value)


def data_config(config: ml_collections.ConfigDict, data_dir: str, split: str, *,
                train: bool, num_nodes: int, sources: list[str] | None = None) -> pipeline.DataConfig:
  """A pipeline config for one split.

  Batch sizes in the config are global; each process reads its share. With
  ``config.data.train_sources`` (cross-manipulation, Table III) the training and
  validation splits keep real faces, those methods and the expansion.
  Evaluation (``train=False``) leaves the expansion's images out: AUCs are on the
  original data.
  """
  if sources is None and split in ("train", "val") and train_sources(config) is not None:
    sources = ["real"] + train_sources(config) + list(EXPANSION_SOURCES)
  exclude = () if train and not config.data.get("exclude_expansion", False) else EXPANSION_SOURCES
  table = label_table(config, hierarchy(config).nodes) if config.data.get("label_table", "") else None
  return pipeline.DataConfig(
      data_dir=data_dir, split=split, sources=sources,
      exclude_sources=exclude, label_table=table,
      image_size=config.data.image_size,
      batch_size=(config.batch_size if train else config.eval_batch_size) // jax.process_count(),
      num_nodes=num_nodes,
      unobserved_as_zero=config.data.unobserved_as_zero,
      binary_only=config.data.binary_only,
      perturb_probability=config.data.perturb_probability if train else 0.0,
      hflip=bool(train and config.data.get("hflip", False)),
      seed=config.seed,
      workers=config.data.workers,
      skip_unreadable=config.data.skip_unreadable,
      balance_real=bool(train and config.data.get("balance_real", False)),
  )


def train_sources(config) -> list[str] | None:
  return _sources(config.data.get("train_sources"))


def test_sets(config: ml_collections.ConfigDict, data_dir: str) -> dict[str, tuple[str, str, list[str] | None]]:
  """Named test sets ``name -> (directory, split, sources or None)``.

  The main dataset's test split; with ``config.data.train_sources`` also each
  held-out method (with the real test faces) for the cross-manipulation protocol;
  then every extra "name=dir" of ``config.test_sets`` (cross-dataset).
  """
  out = {"test": (data_dir, "test", None)}
  trained = train_sources(config)
  if trained is not None:
    for method in labels_lib.FAKE_SOURCES:
      if method not in trained and method not in labels_lib.AUG_SOURCES:
        out[f"held_out/{method}"] = (data_dir, "test", ["real", method])
  extra = config.get("test_sets")
  if extra:
    for item in extra.split(","):
      if "=" not in item:
        raise ConfigError(f"config.test_sets item {item!r} is not name=directory")
      name, d = (s.strip() for s in item.split("=", 1))
      out[name] = (os.path.expanduser(d), "test", None)
  return out


def hierarchy(config: ml_collections.ConfigDict) -> hierarchy_lib.LabelHierarchy:
  """The label graph: a name ("ffpp", "ffpp250"), a JSON path, or a dict in the config."""
  if config.model.get("kind", "sjedd") == "jedd":
    from sjedd_jax.models import jedd  # pylint: disable=g-import-not-at-top
    try:
      return jedd.hierarchy_from_config(config)
    except (jedd.JEDDError, hierarchy_lib.HierarchyError, OSError) as e:
      raise ConfigError(f"config.hierarchy / config.model.jedd: {e}") from e
  if not config.hierarchy:
    raise ConfigError("config.hierarchy is empty: give 'ffpp' or the path of a graph JSON file "
                      '({"nodes": [...], "levels": {...}, "edges": {...}})')
  try:
    return hierarchy_lib.get(config.hierarchy)
  except (hierarchy_lib.HierarchyError, OSError) as e:
    raise ConfigError(f"config.hierarchy: {e}") from e


def templates(config) -> str | tuple[str, ...]:
  """``config.model.templates``: "release", "keyword", a JSON list of strings, or a JSON file of one."""
  t = config.model.templates
  if t in ("release", "keyword"):
    return t
  if not t:
    raise ConfigError("config.model.templates is empty: give 'release', 'keyword', a JSON list of "
                      "template strings (one per node) or a path to a JSON file with that list")
  try:
    if os.path.exists(os.path.expanduser(t)):
      with open(os.path.expanduser(t)) as f:
        value = json.load(f)
    else:
      value = json.loads(t)
  except json.JSONDecodeError as e:
    raise ConfigError(f"config.model.templates={t!r}: not 'release'/'keyword', a JSON list or a JSON file ({e})")
  if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
    raise ConfigError(f"config.model.templates must be a list of strings, got {type(value).__name__}")
  return tuple(value)


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


# --------------------------------------------------------------------- model
class SplitModel(NamedTuple):
  """A model taken apart for pure functions: ``scores_fn(params, images) -> (B, n)``."""
  model: Any                 # the SJEDD nnx.Module (its structure; params may be stale)
  graphdef: Any
  params: Any                # trainable nnx.State
  rest: Any                  # everything else (frozen params, constants)
  scores_fn: Callable


def _model_options(config, hierarchy) -> dict[str, Any]:
  m = config.model
  head = {"joint": "text", "text": "text", "linear": "linear"}.get(m.head)
  if head is None:
    raise ConfigError(f"config.model.head={m.head!r}; expected 'joint' (text tower) or 'linear' (image-only)")
  return dict(hierarchy=hierarchy, templates=templates(config) if head == "text" else "release", tau=m.tau, similarity=m.similarity,
              cosine_tau=m.get("cosine_tau", 0.01), head=head, freeze_text=m.freeze_text,
              text_context=m.text_context or None, per_level_passes=m.get("per_level_passes", False))


def model(config, hierarchy):
  """The model of ``config.model``: a pretrained CLIP from a local path, or a fresh preset.

  With ``config.model.compact_vocab`` the text tower keeps only the token rows
  its templates use (``clip.restrict_vocabulary``): the same outputs and the same
  training, with a far smaller parameter tree.
  """
  m_ = _model(config, hierarchy)
  if config.model.get("compact_vocab", False) and getattr(m_, "head_kind", "text") == "text":
    from sjedd_jax.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
    ids = clip_lib.restrict_vocabulary(m_.clip, m_.template_ids)
    m_.template_ids = tuple(tuple(int(t) for t in row) for row in ids)
  return m_


def _model(config, hierarchy):
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sjedd_jax.models import sjedd  # pylint: disable=g-import-not-at-top
  m = config.model
  kind = m.get("kind", "sjedd")
  if kind == "jedd":
    from sjedd_jax.models import jedd  # pylint: disable=g-import-not-at-top
    if m.pretrained and not os.path.exists(os.path.expanduser(m.pretrained)):
      raise ConfigError(f"config.model.pretrained={m.pretrained!r} does not exist. {_WEIGHTS_HELP}")
    try:
      return jedd.model_from_config(config, hierarchy)
    except (jedd.JEDDError, ValueError) as e:
      raise ConfigError(f"config.model (kind 'jedd'): {e}") from e
  if kind != "sjedd":
    raise ConfigError(f"config.model.kind={kind!r}; expected 'sjedd' or 'jedd'")
  opts = _model_options(config, hierarchy)
  if m.pretrained:
    path = os.path.expanduser(m.pretrained)
    if not os.path.exists(path):
      raise ConfigError(f"config.model.pretrained={m.pretrained!r} does not exist. {_WEIGHTS_HELP}")
    return sjedd.from_pretrained(path, dtype=m.dtype, scan_layers=m.get("scan_layers"), **opts)
  clip = m.clip
  if m.get("clip_overrides"):
    from sjedd_jax.models import clip as clip_lib  # pylint: disable=g-import-not-at-top
    clip = clip_lib.get_config(m.clip, **dict(m.clip_overrides))
  return sjedd.build(clip, dtype=m.dtype, scan_layers=m.get("scan_layers"), rngs=nnx.Rngs(config.seed), **opts)


def split_model(model_, config=None) -> SplitModel:
  del config
  from sjedd_jax.models import sjedd  # pylint: disable=g-import-not-at-top
  graphdef, params, rest = sjedd.split(model_)
  return SplitModel(model_, graphdef, params, rest, sjedd.scores_fn(graphdef, rest))


EXPORT_META = "sjedd.json"


def export(split: SplitModel, params, config, out_dir: str) -> str:
  """Writes an inference export: the CLIP (``load_pretrained`` format) plus ``sjedd.json``.

  ``sjedd.json`` holds the SJEDD options (tau, similarity, head, hierarchy graph,
  template ids) and the training config; a linear head goes to ``head.safetensors``.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from sjedd_jax.checkpoints import save_pretrained  # pylint: disable=g-import-not-at-top
  if jax.process_index() != 0:
    return out_dir
  m = nnx.merge(split.graphdef, jax.device_get(params), split.rest)
  tmp = out_dir + ".tmp"
  if os.path.exists(tmp):
    shutil.rmtree(tmp)
  if getattr(m, "kind", "sjedd") == "jedd":
    from sjedd_jax.models import jedd  # pylint: disable=g-import-not-at-top
    jedd.export(m, tmp, to_dict(config))
    if os.path.exists(out_dir):
      shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir
  save_pretrained(m.clip, tmp, source="sjedd_jax.train")
  meta = {
      "hierarchy": m.hierarchy.to_dict(), "tau": m.tau, "similarity": m.similarity,
      "cosine_tau": m.cosine_tau, "head": m.head_kind, "freeze_text": m.freeze_text,
      "text_context": m.text_context, "template_ids": [list(r) for r in m.template_ids],
      "image_size": m.clip.config.image_size, "config": to_dict(config),
  }
  if m.head_kind == "linear":
    save_file({"kernel": np.asarray(m.head.kernel.value), "bias": np.asarray(m.head.bias.value)},
              os.path.join(tmp, "head.safetensors"))
  with open(os.path.join(tmp, EXPORT_META), "w") as f:
    json.dump(meta, f, indent=2, default=str)
  if os.path.exists(out_dir):
    shutil.rmtree(out_dir)
  os.replace(tmp, out_dir)
  return out_dir


def load_export(path: str, dtype: str | None = None):
  """The SJEDD model saved by ``export`` (no config needed)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from sjedd_jax import hierarchy as hierarchy_lib  # pylint: disable=g-import-not-at-top
  from sjedd_jax.checkpoints import load_pretrained  # pylint: disable=g-import-not-at-top
  from sjedd_jax.models import sjedd  # pylint: disable=g-import-not-at-top
  meta_path = os.path.join(path, EXPORT_META)
  from sjedd_jax.models import jedd  # pylint: disable=g-import-not-at-top
  if not os.path.exists(meta_path) and os.path.exists(os.path.join(path, jedd.EXPORT_META)):
    return jedd.load_export(path, dtype=dtype)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{path}: no {EXPORT_META}; not a model exported by sjedd_jax.train")
  with open(meta_path) as f:
    meta = json.load(f)
  clip, tokenizer = load_pretrained(path, dtype=dtype)
  cfg = sjedd.SJEDDConfig(hierarchy=hierarchy_lib.LabelHierarchy.from_dict(meta["hierarchy"]), tau=meta["tau"],
                          similarity=meta["similarity"], cosine_tau=meta["cosine_tau"], head=meta["head"],
                          freeze_text=meta["freeze_text"], text_context=meta["text_context"] or None)
  ids = np.asarray(meta["template_ids"], np.int32) if meta["template_ids"] else None
  model_ = sjedd.SJEDD(clip, cfg, tokenizer=tokenizer, template_ids=ids)
  if meta["head"] == "linear":
    head = load_file(os.path.join(path, "head.safetensors"))
    model_.head.kernel.value = jnp.asarray(head["kernel"])
    model_.head.bias.value = jnp.asarray(head["bias"])
  return model_


def load_for_inference(config, hierarchy_, workdir: str | None, which: str = "best"):
  """``(SplitModel, params)`` from a workdir checkpoint ("best"/"latest") or an export directory."""
  if which not in ("best", "latest"):
    split = split_model(load_export(os.path.expanduser(which), dtype=config.model.dtype if config else None))
    return split, split.params
  if config is None or workdir is None:
    raise ConfigError(f"--checkpoint={which} needs --config and --workdir")
  from sjedd_jax import checkpointing, train_step as ts  # pylint: disable=g-import-not-at-top
  split = split_model(model(config, hierarchy_))
  mesh = ts.data_mesh()
  ckpt = checkpointing.Checkpointer(workdir)
  abstract = ts.shard_state(_abstract_train_state(config, split), mesh)
  state, _, _ = ckpt.restore(abstract, which=which)
  ckpt.close()
  return split, state.params


def weighting(config, steps_per_epoch: int):
  """The loss-weight learner of ``config.weighting`` (bilevel, fixed or dwa)."""
  from sjedd_jax import train_step as ts  # pylint: disable=g-import-not-at-top
  w = config.weighting
  try:
    return ts.make_weighting(w.kind, lam_lr=w.lam_lr, lam_init=w.lam_init, method=w.method, radius=w.radius,
                             update_every=w.update_every, fixed=tuple(w.fixed),
                             dwa_temperature=w.get("dwa_temperature", 2.0),
                             dwa_period=w.get("dwa_period", 0) or steps_per_epoch)
  except ValueError as e:
    raise ConfigError(f"config.weighting: {e}") from e


def _abstract_train_state(config, split: SplitModel):
  """A TrainState with the run's structure (for restoring; values are not used)."""
  import optax  # pylint: disable=g-import-not-at-top
  from sjedd_jax import train_step as ts  # pylint: disable=g-import-not-at-top
  opt = ts.model_optimizer(optax.constant_schedule(0.0), config.optim.weight_decay,
                           b1=config.optim.b1, b2=config.optim.b2, eps=config.optim.eps)  # same structure
  return ts.init_state(split.params, opt, weighting(config, steps_per_epoch=1))
