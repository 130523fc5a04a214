"""SJEDD as a detector: CLIP joint embedding + label hierarchy + per-level fidelity losses (the flagship).

What this package owns (``sjedd_jax.detectors.interface`` says what a detector is):

* ``model.py``      the scoring model (CLIP -> raw scores f -> marginals, spec 2-3);
* ``hierarchy.py``  the label graph and its marginals (two matrix products, spec 1-2);
* ``labels.py``     Table I: the expanded FF++ sources as labels over the graph's nodes;
* ``losses.py``     fidelity / BCE task losses per level (spec 4);
* ``templates.py``  the release's and the keyword templates, their CLIP token ids;
* ``explain.py``    textual explanations and bar charts of the marginals.

Tasks: one per level of the graph, ``("primary", "global", "local")``; the
bi-level outer loss is the primary (fake/real) task. ``make(config)`` builds the
detector of a config; JEDD (``detectors/jedd``) reuses ``clip_detector`` with its
own model and graph.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjedd_jax import xla_cpu
from sjedd_jax.backbones import clip as clip_backbone
from sjedd_jax.config import ConfigError
from sjedd_jax.detectors import interface
from sjedd_jax.detectors.sjedd import explain as explain_lib
from sjedd_jax.detectors.sjedd import hierarchy as hierarchy_lib
from sjedd_jax.detectors.sjedd import labels as labels_lib
from sjedd_jax.detectors.sjedd import losses as losses_lib

NAME = "sjedd"
PAPER = "SJEDD: semantics-oriented joint-embedding deepfake detection (TCSVT 2025)"
BACKBONE = "CLIP ViT (image + text towers)"
TASK_NAMES = hierarchy_lib.LEVEL_NAMES      # ("primary", "global", "local")
EXPORT_MARKER = "sjedd.json"
LABEL_KEYS = ("y", "observed")
SYNTHETIC_CONFIG = "synthetic.py"           # configs/<this>: the CPU twin (scripts/compare_detectors.py)


def summarize(results: Mapping[str, Any]) -> dict[str, float]:
  """The detector's own metrics of one test set, as numbers for a table: mean per-node AUC (non-root)."""
  nodes = results.get("nodes") or {}
  aucs = [v["auc"] for k, v in list(nodes.items())[1:] if v.get("auc") is not None and v["auc"] == v["auc"]]
  return {"mean node AUC": float(np.mean(aucs))} if aucs else {}

WEIGHTS_HELP = (
    "Give a local CLIP checkpoint with --config.model.pretrained=PATH: a Hugging Face directory "
    "(config.json + model.safetensors, e.g. a saved openai/clip-vit-base-patch32), an OpenAI .pt file "
    "(ViT-B-32.pt), or a file made by scripts/convert_checkpoint.py. Weights cannot be downloaded at run time.")


# ----------------------------------------------------------------- config
def model_defaults() -> ml_collections.ConfigDict:
  """``config.model`` of SJEDD (the release recipe of spec section 6 where it applies)."""
  m = ml_collections.ConfigDict()
  m.clip = "ViT-B/32"              # preset, used when no pretrained path is given
  m.clip_overrides = ml_collections.ConfigDict()  # CLIPConfig fields over the preset (e.g. patch_size)
  m.pretrained = ""                # local CLIP checkpoint (HF dir, OpenAI .pt/.safetensors)
  m.require_pretrained = False     # True: refuse to start from random weights
  m.tau = 10.0
  m.similarity = "dot"             # "dot" (the paper) or "cosine"
  m.cosine_tau = 0.01              # tau' of the cosine variant
  m.per_level_passes = False       # the release's redundant per-level CLIP passes (benchmarks)
  m.head = "text"                  # "text" (joint embedding) or "linear" (image-only)
  m.freeze_text = False
  m.templates = "release"          # "release" or "keyword"
  m.text_context = 0               # 0: longest template (17); 77: full context
  m.dtype = "float32"              # compute dtype; "bfloat16" for speed
  m.cpu_kernels = "ynnpack"        # XLA:CPU's matmul/conv kernels: "ynnpack" (XLA's default, the reference numbers), "eigen", "auto" (eigen on CPU); xla_cpu.py
  m.scan_layers = True             # residual blocks as one lax.scan (False: unrolled; docs/performance.md)
  m.compact_vocab = False          # True: keep only the templates' token-embedding rows (same outputs)
  return m


def defaults(c: ml_collections.ConfigDict) -> None:
  """SJEDD's fields: ``model``, the label graph, the loss and the label options of the data."""
  c.model = model_defaults()
  c.hierarchy = "ffpp"                   # name, JSON path or dict
  c.loss = "fidelity"                    # or "bce"
  c.data.unobserved_as_zero = False      # True: the release's N/A -> 0, unmasked
  c.data.binary_only = False             # True: no relabelling (Table X ablation)
  c.data.label_table = ""                # "": Table I; "jedd_draft" or a JSON file {source: {node: 0/1/null}}
  c.weighting.fixed = (1.0, 1.0, 1.0)


def hierarchy_from_config(config) -> hierarchy_lib.LabelHierarchy:
  """The label graph: a name ("ffpp", "ffpp250"), a JSON path, or a dict in the config."""
  if not config.get("hierarchy"):
    raise ConfigError("config.hierarchy is empty: give 'ffpp' or the path of a graph JSON file "
                      '({"nodes": [...], "levels": {...}, "edges": {...}})')
  try:
    return hierarchy_lib.get(config.hierarchy)
  except (hierarchy_lib.HierarchyError, OSError) as e:
    raise ConfigError(f"config.hierarchy: {e}") from e


def templates_from_config(config) -> str | tuple[str, ...]:
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


def label_table(config, nodes) -> dict[str, tuple[int, ...]] | None:
  """``config.data.label_table`` as rows over ``nodes`` ("" -> None: Table I)."""
  spec = config.data.get("label_table", "")
  if not spec:
    return None
  from sjedd_jax.detectors.jedd import model as jedd  # pylint: disable=g-import-not-at-top
  try:
    return jedd.label_table(spec, nodes)
  except (jedd.JEDDError, OSError, ValueError) as e:
    raise ConfigError(f"config.data.label_table: {e}") from e


def check_weights(config) -> list[str]:
  """Problems with ``config.model.pretrained`` (for the trainer's preflight), as sentences."""
  m = config.model
  if m.get("pretrained") and not os.path.exists(os.path.expanduser(m.pretrained)):
    return [f"weights: config.model.pretrained={m.pretrained!r} does not exist. {WEIGHTS_HELP}"]
  if not m.get("pretrained") and m.get("require_pretrained", False):
    return [f"weights: config.model.pretrained is empty and this config needs pretrained CLIP weights. "
            f"{WEIGHTS_HELP}"]
  return []


# ----------------------------------------------------------------- labels
def make_label_fn(nodes, *, table: Mapping[str, Any] | None = None, unobserved_as_zero: bool = False,
                  binary_only: bool = False) -> Callable:
  """``record -> {"y": (n,), "observed": (n,)}``: the training target of a manifest record.

  In order: ``binary_only`` keeps just the primary label (the no-relabelling
  ablation); explicit ``y``/``observed`` in the record win; a ``table`` row for
  the record's source (another graph's labels, e.g. the JEDD draft's); Table I
  when the graph is the FF++ one (its nodes, in its order); otherwise only the
  primary label (``is_fake``) is observed. N/A entries are unobserved (0 in
  ``observed``) unless ``unobserved_as_zero`` (the release: N/A -> 0, all observed).
  """
  nodes = tuple(nodes)
  n = len(nodes)
  table_i = nodes == tuple(hierarchy_lib.FFPP_NODES)

  def observed_as(y, observed):
    if unobserved_as_zero:
      return {"y": (y * observed).astype(np.float32), "observed": np.ones_like(observed)}
    return {"y": y, "observed": observed}

  def label_fn(rec) -> dict[str, np.ndarray]:
    if binary_only:
      y, obs = labels_lib.binary_label(bool(rec.is_fake), n)
      return {"y": y, "observed": obs}
    if rec.y is not None:
      y = np.asarray(rec.y, np.float32)
      obs = np.ones_like(y) if rec.observed is None else np.asarray(rec.observed, np.float32)
      if y.shape != (n,) or obs.shape != (n,):
        raise labels_lib.LabelError(f"{rec.path}: y/observed have shape {y.shape}/{obs.shape}, expected ({n},) "
                                    f"for the nodes {list(nodes)}")
      return observed_as(y, obs)
    if table is not None and rec.source in table:
      row = np.asarray(table[rec.source], np.int32)
      if row.shape != (n,):
        raise labels_lib.LabelError(f"label_table row of {rec.source!r} has shape {row.shape}, expected ({n},)")
      if int(row[0]) != int(rec.is_fake):
        raise labels_lib.LabelError(f"{rec.path}: label_table row of {rec.source!r} contradicts "
                                    f"is_fake={rec.is_fake}")
      observed = (row >= 0).astype(np.float32)
      return observed_as(np.where(row >= 0, row, 0).astype(np.float32), observed)
    if table_i and rec.source in labels_lib.TABLE_I:
      y, obs = labels_lib.ffpp_label(rec.source)
      if int(y[0]) != int(rec.is_fake):
        raise labels_lib.LabelError(f"{rec.path}: source {rec.source!r} contradicts is_fake={rec.is_fake}")
      return observed_as(y, obs)
    y, obs = labels_lib.binary_label(bool(rec.is_fake), n)
    return {"y": y, "observed": obs}

  return label_fn


def record_label(rec, nodes=hierarchy_lib.FFPP_NODES, **options) -> tuple[np.ndarray, np.ndarray]:
  """``(y, observed)`` of one record over ``nodes`` by ``make_label_fn``'s rules (scripts, notebooks)."""
  out = make_label_fn(nodes, **options)(rec)
  return out["y"], out["observed"]


def label_fn_from_config(config, nodes) -> Callable:
  d = config.data
  return make_label_fn(nodes, table=label_table(config, nodes) if d.get("label_table", "") else None,
                       unobserved_as_zero=bool(d.get("unobserved_as_zero", False)),
                       binary_only=bool(d.get("binary_only", False)))


# ----------------------------------------------------------------- the model
def build_module(config, hierarchy: hierarchy_lib.LabelHierarchy, seed: int):
  """The SJEDD module of ``config.model``: a pretrained CLIP from a local path, or a fresh preset.

  With ``config.model.compact_vocab`` the text tower keeps only the token rows
  its templates use (``clip.restrict_vocabulary``): the same outputs and the same
  training, with a far smaller parameter tree.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.sjedd import model as sjedd_model  # pylint: disable=g-import-not-at-top
  m = config.model
  head = {"joint": "text", "text": "text", "linear": "linear"}.get(m.head)
  if head is None:
    raise ConfigError(f"config.model.head={m.head!r}; expected 'joint' (text tower) or 'linear' (image-only)")
  opts = dict(hierarchy=hierarchy, templates=templates_from_config(config) if head == "text" else "release",
              tau=m.tau, similarity=m.similarity, cosine_tau=m.get("cosine_tau", 0.01), head=head,
              freeze_text=m.freeze_text, text_context=m.text_context or None,
              per_level_passes=m.get("per_level_passes", False))
  try:
    if m.pretrained:
      path = os.path.expanduser(m.pretrained)
      if not os.path.exists(path):
        raise ConfigError(f"config.model.pretrained={m.pretrained!r} does not exist. {WEIGHTS_HELP}")
      module = sjedd_model.from_pretrained(path, dtype=m.dtype, scan_layers=m.get("scan_layers"), **opts)
    else:
      rngs = nnx.Rngs(seed)  # one stream: the CLIP, then a linear head
      clip = clip_backbone.build(m.clip, overrides=m.get("clip_overrides"), dtype=m.dtype,
                                 scan_layers=m.get("scan_layers"), rngs=rngs)
      module = sjedd_model.build(clip, rngs=rngs, **opts)
  except (ValueError, KeyError) as e:
    if isinstance(e, ConfigError):
      raise
    raise ConfigError(f"config.model: {e}") from e
  return compact_vocabulary(module) if m.get("compact_vocab", False) else module


def compact_vocabulary(module):
  """Keeps only the token rows of the module's templates (``config.model.compact_vocab``), in place."""
  if getattr(module, "head_kind", "text") == "text":
    ids = clip_backbone.restrict_vocabulary(module.clip, module.template_ids)
    module.template_ids = tuple(tuple(int(t) for t in row) for row in ids)
  return module


def hierarchical_detector(name: str, scores: Callable, hierarchy: hierarchy_lib.LabelHierarchy, *,
                          loss: str = "fidelity", label_fn: Callable | None = None, image_size: int = 224,
                          init: Callable | None = None, **fields) -> interface.Detector:
  """A detector from a scoring function over the nodes of a label graph (SJEDD's tasks and outputs).

  ``scores(params, state, images) -> (B, raw scores)``; ``hierarchy.marginals``
  turns them into node marginals; the tasks are the graph's three levels, each a
  mean ``loss`` ("fidelity" or "bce") over its observed nodes; ``predict`` gives
  P(fake) (the root's marginal) and the marginals. ``fields`` fill the rest of the
  ``Detector`` (export, bind, ...).
  """
  if loss not in losses_lib.ELEMENTWISE:
    raise ConfigError(f"config.loss={loss!r}; expected one of {sorted(losses_lib.ELEMENTWISE)}")
  levels = tuple(hierarchy.levels)
  root = hierarchy.root

  def task_losses(params, state, batch, rng, train):
    del rng, train
    marg = hierarchy.marginals(scores(params, state, batch["image"]).astype(jnp.float32))
    task = losses_lib.task_losses(marg, batch["y"], batch["observed"], levels, loss)
    correct = ((marg[:, 0] > 0.5) == (batch["y"][:, 0] > 0.5)).astype(jnp.float32)
    return task, state, {"accuracy": jnp.mean(correct)}

  def predict(params, state, images):
    marg = hierarchy.marginals(scores(params, state, images).astype(jnp.float32))
    return {"p_fake": marg[:, root], "marginals": marg}

  def eval_metrics(outputs, labels):
    from sjedd_jax import metrics as metrics_lib  # pylint: disable=g-import-not-at-top
    if "marginals" not in outputs or "y" not in labels:
      return {}
    return {"nodes": metrics_lib.node_aucs(outputs["marginals"], labels["y"], labels["observed"],
                                           hierarchy.nodes)}

  def describe(outputs, *, threshold: float = 0.5, subject: str = "face image"):
    ex = explain_lib.explain_structured(outputs["marginals"], hierarchy, threshold, subject=subject)
    return {"fake": ex["fake"], "marginals": {n: float(v) for n, v in zip(hierarchy.nodes, outputs["marginals"])},
            "explanation": ex["text"], "globals": ex["globals"], "locals": ex["locals"],
            "most_probable": ex["most_probable"]}

  def plot(outputs, path, *, title: str, image=None, threshold: float = 0.5):
    del image
    explain_lib.plot_marginals(outputs["marginals"], hierarchy, path, threshold, titles=[title])
    return path

  def no_init(seed):
    raise RuntimeError(f"detector {name!r} was built around given parameters; it has no init")

  return interface.Detector(
      name=name, task_names=TASK_NAMES, batch_keys=("image",) + LABEL_KEYS,
      label_fn=label_fn or make_label_fn(hierarchy.nodes), init=init or no_init, task_losses=task_losses,
      predict=predict, image_size=int(image_size), mean=clip_backbone.MEAN, std=clip_backbone.STD,
      primary=(1.0, 0.0, 0.0), eval_metrics=eval_metrics, describe=describe, plot=plot, **fields)


def scores_detector(scores_fn: Callable, hierarchy, *, loss: str = "fidelity", image_size: int = 224,
                    name: str = "scores") -> interface.Detector:
  """A detector around a plain ``scores_fn(params, images) -> (B, n)`` (no model state): tests,
  benchmarks and the bi-level library's examples use it with any parameter pytree."""
  return hierarchical_detector(name, lambda params, state, images: scores_fn(params, images),
                               hierarchy_lib.get(hierarchy), loss=loss, image_size=image_size)


def clip_detector(name: str, *, hierarchy: hierarchy_lib.LabelHierarchy, build: Callable[[int], Any],
                  trainable: Callable, label_fn: Callable, loss: str, image_size: int,
                  export: Callable | None, handle: interface.ModuleHandle | None = None,
                  compiler_options: Mapping[str, str] | None = None) -> interface.Detector:
  """A detector from a CLIP module that scores images against the nodes of a label graph (SJEDD, JEDD).

  ``build(seed) -> module`` with ``module.scores(images) -> (B, raw scores)``.
  """
  handle = handle or interface.ModuleHandle(name, trainable)

  def export_fn(variables, out_dir, config=None):
    return export(handle.merge(jax.device_get(variables.params), jax.device_get(variables.state)), out_dir, config)

  return hierarchical_detector(
      name, lambda params, state, images: handle.merge(params, state).scores(images), hierarchy, loss=loss,
      label_fn=label_fn, image_size=image_size, init=lambda seed: handle.split(build(seed)),
      export=export_fn if export is not None else None, bind=handle.merge, compiler_options=compiler_options)


def make(config) -> interface.Detector:
  """The SJEDD detector of ``config`` (``config.model``, ``config.hierarchy``, ``config.loss``)."""
  from sjedd_jax.detectors.sjedd import model as sjedd_model  # pylint: disable=g-import-not-at-top
  h = hierarchy_from_config(config)
  return clip_detector(NAME, hierarchy=h, build=lambda seed: build_module(config, h, seed),
                       trainable=sjedd_model.trainable_filter, label_fn=label_fn_from_config(config, h.nodes),
                       loss=config.get("loss", "fidelity"), image_size=config.data.image_size,
                       export=export, compiler_options=xla_cpu.from_model_config(config.model, default="ynnpack"))


# ----------------------------------------------------------------- export
def _to_dict(config):
  if config is None:
    return None
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def write_clip_export(out_dir: str, clip, meta_name: str, meta: dict, *, name: str, source: str,
                      extra_files: Mapping[str, Callable[[str], None]] | None = None) -> str:
  """Writes a CLIP-based export atomically: the CLIP (``load_pretrained`` format), ``meta_name``,
  ``detector.json`` and any extra files, into ``out_dir.tmp`` then renamed to ``out_dir``."""
  from sjedd_jax import detectors  # pylint: disable=g-import-not-at-top

  def write(tmp):
    clip_backbone.save_pretrained(clip, tmp, source=source)
    for fname, write_file in (extra_files or {}).items():
      write_file(os.path.join(tmp, fname))

  return detectors.write_export(out_dir, name, write, meta_name, meta)


def export(module, out_dir: str, config=None) -> str:
  """Writes an inference export of an SJEDD module: the CLIP plus ``sjedd.json``.

  ``sjedd.json`` holds the SJEDD options (tau, similarity, head, hierarchy graph,
  template ids) and the training config; a linear head goes to ``head.safetensors``.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  m = module
  meta = {
      "hierarchy": m.hierarchy.to_dict(), "tau": m.tau, "similarity": m.similarity,
      "cosine_tau": m.cosine_tau, "head": m.head_kind, "freeze_text": m.freeze_text,
      "text_context": m.text_context, "template_ids": [list(r) for r in m.template_ids],
      "image_size": m.clip.config.image_size, "config": _to_dict(config),
  }
  extra = {}
  if m.head_kind == "linear":
    extra["head.safetensors"] = lambda p: save_file(
        {"kernel": np.asarray(m.head.kernel.value), "bias": np.asarray(m.head.bias.value)}, p)
  return write_clip_export(out_dir, m.clip, EXPORT_MARKER, meta, name=NAME, source="sjedd_jax.train",
                           extra_files=extra)


def load_module(path: str, dtype: str | None = None):
  """The SJEDD module saved by ``export`` (no config needed)."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.sjedd import model as sjedd_model  # pylint: disable=g-import-not-at-top
  from sjedd_jax import detectors  # pylint: disable=g-import-not-at-top
  meta = detectors.read_export_meta(path, EXPORT_MARKER)
  clip, tokenizer = clip_backbone.load_pretrained(path, dtype=dtype)
  cfg = sjedd_model.SJEDDConfig(hierarchy=hierarchy_lib.LabelHierarchy.from_dict(meta["hierarchy"]),
                                tau=meta["tau"], similarity=meta["similarity"], cosine_tau=meta["cosine_tau"],
                                head=meta["head"], freeze_text=meta["freeze_text"],
                                text_context=meta["text_context"] or None)
  ids = np.asarray(meta["template_ids"], np.int32) if meta["template_ids"] else None
  module = sjedd_model.SJEDD(clip, cfg, tokenizer=tokenizer, template_ids=ids)
  if meta["head"] == "linear":
    head = load_file(os.path.join(path, "head.safetensors"))
    module.head.kernel.value = jnp.asarray(head["kernel"])
    module.head.bias.value = jnp.asarray(head["bias"])
  return module


def from_module(module, *, name: str = NAME, label_fn: Callable | None = None, loss: str = "fidelity",
                export_fn: Callable | None = None) -> tuple[interface.Detector, interface.Variables]:
  """A detector around an already built module (an export, the release checkpoint) and its variables."""
  from sjedd_jax.detectors.sjedd import model as sjedd_model  # pylint: disable=g-import-not-at-top
  h = module.hierarchy
  handle = interface.ModuleHandle(name, sjedd_model.trainable_filter)
  variables = handle.split(module)
  det = clip_detector(name, hierarchy=h, build=lambda seed: module, trainable=sjedd_model.trainable_filter,
                      label_fn=label_fn or make_label_fn(h.nodes), loss=loss,
                      image_size=module.clip.config.image_size, export=export_fn or export, handle=handle)
  return det, variables


def load_export(path: str, dtype: str | None = None) -> tuple[interface.Detector, interface.Variables]:
  return from_module(load_module(path, dtype=dtype))


def from_release_checkpoint(path: str, dtype: str | None = None) -> tuple[interface.Detector, interface.Variables]:
  """The authors' released model (``.pth`` or converted directory) as a detector."""
  from sjedd_jax.detectors.sjedd import model as sjedd_model  # pylint: disable=g-import-not-at-top
  return from_module(sjedd_model.from_release_checkpoint(path, dtype=dtype))
