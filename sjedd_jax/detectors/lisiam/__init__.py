"""LiSiam as a detector: a Siamese Xception-OCR segmenter with a mask-guided transformer classifier.

Wang, Sun, Tang, "LiSiam: Localization Invariance Siamese Network for Deepfake Detection",
IEEE TIFS 2022 (spec: /work/shared/spec/lisiam.md). What this package owns:

* ``model.py``    the network (spec section 2) and the release checkpoint's key map;
* ``losses.py``   L_cls, L_seg (and the auxiliary OCR loss), L_li (section 3);
* ``metrics.py``  localisation IoU/F1/pixel AUC, fake area on reals, view consistency,
                  majority-vote video accuracy (section 5);
* ``data.py``     the two views + label mask (the pipeline's transform hook), mask preparation;
* ``viz.py``      the localisation overlay ``predict --plots`` writes.

Tasks ``("cls", "seg", "li", "aux")`` with fixed weights (1, 1, 1, 0.4) (the paper and the
release); with the bi-level weighting the outer loss is L_cls (``primary`` (1, 0, 0, 0)) and
lambda is kept non-negative (``config.weighting.nonneg``). ``config.lisiam.variant`` picks
the loss wiring of Table VI (A = LiSiam; B, C, D, E, G; F is A with
``config.model.head="seg_logits"``); phases 1-3 freeze parameter groups ``"seg"`` (backbone,
OCR, aux head, segmentation decoder) or ``"cls"`` (SCU, MT, SE, MLP) through
``config.optim.frozen``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjedd_jax import xla_cpu
from sjedd_jax.config import ConfigError
from sjedd_jax.detectors import interface
from sjedd_jax.detectors.lisiam import losses as losses_lib
from sjedd_jax.detectors.lisiam import metrics as metrics_lib

NAME = "lisiam"
PAPER = "LiSiam: localization invariance Siamese network (TIFS 2022)"
BACKBONE = "Xception (block3/12 stride 1) + OCR"
TASK_NAMES = ("cls", "seg", "li", "aux")
WEIGHTS = (1.0, 1.0, 1.0, 0.4)
PRIMARY = (1.0, 0.0, 0.0, 0.0)
EXPORT_MARKER = "lisiam.json"
EXPORT_WEIGHTS = "lisiam.safetensors"
SYNTHETIC_CONFIG = "lisiam/synthetic.py"     # configs/<this>: the CPU twin (scripts/compare_detectors.py)
VARIANTS = ("A", "B", "C", "D", "E", "G")    # Table VI loss wirings (F = A + model.head="seg_logits")
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)
LABEL_KEYS = ("y",)

WEIGHTS_HELP = (
    "Give ImageNet Xception weights with --config.model.pretrained=PATH (Cadene's xception-b5690688.pth or "
    "timm's legacy_xception .pth/.safetensors), a LiSiam release checkpoint with "
    "--config.model.release_checkpoint=PATH, or the export of an earlier phase with --config.model.init_from=DIR. "
    "Weights cannot be downloaded at run time.")


def summarize(results: Mapping[str, Any]) -> dict[str, float]:
  """The detector's own metrics of one test set, as numbers for a table."""
  return metrics_lib.summarize(results.get(NAME))


# ----------------------------------------------------------------- config
def model_defaults() -> ml_collections.ConfigDict:
  """``config.model`` of LiSiam (the release, 299 px)."""
  m = ml_collections.ConfigDict()
  m.preset = "lisiam"              # model.get_config preset: "lisiam", "lisiam-tiny", "test"
  m.scu = "release"                # or "depthwise" (the paper's wording)
  m.head = "mt"                    # or "seg_logits" (Table VI model F)
  m.channel_order = "rgb"          # "bgr" only for the release's checkpoints
  m.dtype = "float32"
  m.pointwise = "auto"             # 1x1 convs: "matmul" (2-5x faster on XLA:CPU), "xla", "auto" (matmul on CPU); same function
  m.cpu_kernels = "auto"           # XLA:CPU's conv/matmul kernels: "eigen", "ynnpack" (XLA's default), "auto" (eigen); xla_cpu.py
  m.depthwise = "auto"             # backbone depthwise convs: "shifted" (fast on CPU), "xla" (same function; GPU/TPU kernels), "auto" (shifted on CPU)
  m.remat = "auto"                 # "blocks": recompute each backbone block in the backward pass (same gradients, 1/5 the memory, faster on CPU), "none", "auto" (blocks on CPU)
  m.overrides = ml_collections.ConfigDict()           # other LiSiamConfig fields (widths, dropout rates)
  m.backbone_overrides = ml_collections.ConfigDict()  # XceptionConfig fields
  m.pretrained = ""                # ImageNet Xception (Cadene / timm state dict)
  m.require_pretrained = False
  m.release_checkpoint = ""        # a LiSiam_A (or _F) release .pth
  m.init_from = ""                 # WORKDIR/export of an earlier phase (all weights)
  return m


def lisiam_defaults() -> ml_collections.ConfigDict:
  """``config.lisiam``: loss wiring, masks, views, evaluation options."""
  d = ml_collections.ConfigDict()
  d.variant = "A"                  # Table VI: A (LiSiam), B, C, D, E, G
  d.li_on = "logits"               # L_li on "logits" (the release) or "probs"
  d.masks = "manifest"             # "manifest", "oracle", "ssim", "ssim_literal", "diff" (data.py)
  d.mask_workers = 0               # processes for making synthetic masks
  d.eval_mask_size = 0             # side of evaluation masks; 0: the segmentation map's
  d.p_shuffle = 0.0                # the release's patch shuffle probability (0.5 there; off [I])
  d.video_vote = True              # video ACC by majority vote, when the evaluator passes video ids
  return d


def defaults(c: ml_collections.ConfigDict) -> None:
  """LiSiam's fields: ``model``, ``lisiam``, the release's optimiser and the fixed task weights."""
  c.model = model_defaults()
  c.lisiam = lisiam_defaults()
  c.data.image_size = 299
  c.data.perturb_probability = 0.0       # the views' IQD is the only image degradation
  c.data.balance_real = True             # the release's balanced list (720 real x 4 + 2880 fake) [I]
  c.weighting.kind = "fixed"
  c.weighting.fixed = WEIGHTS
  del c.weighting.lam_init                 # a float in the base config; one per task here
  c.weighting.lam_init = WEIGHTS
  c.weighting.primary = PRIMARY
  c.weighting.nonneg = True
  c.optim.name = "sgd"
  c.optim.lr = 0.002
  c.optim.momentum = 0.9
  c.optim.weight_decay = 5e-4
  c.optim.schedule = "poly"
  c.optim.poly_power = 0.9


def model_config(config):
  """The ``LiSiamConfig`` of ``config.model``."""
  from sjedd_jax.detectors.lisiam import model as model_lib  # pylint: disable=g-import-not-at-top
  m = config.model
  try:
    cfg = model_lib.get_config(m.preset, scu=m.scu, head=m.head, channel_order=m.channel_order, dtype=m.dtype,
                               depthwise=m.get("depthwise", "auto"), pointwise=m.get("pointwise", "auto"),
                               remat=m.get("remat", "auto"), **dict(m.get("overrides") or {}))
    over = dict(m.get("backbone_overrides") or {})
    if over:
      over = {k: tuple(v) if isinstance(v, list) else v for k, v in over.items()}
      cfg = cfg.replace(backbone=cfg.backbone.replace(**over))
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.model (detector 'lisiam'): {e}") from e
  return cfg


def check_weights(config) -> list[str]:
  """Problems with the weight paths of ``config.model`` (for the trainer's preflight)."""
  m = config.model
  out = []
  for key in ("pretrained", "release_checkpoint", "init_from"):
    p = m.get(key)
    if p and not os.path.exists(os.path.expanduser(p)):
      out.append(f"weights: config.model.{key}={p!r} does not exist. {WEIGHTS_HELP}")
  if m.get("require_pretrained") and not any(m.get(k) for k in ("pretrained", "release_checkpoint", "init_from")):
    out.append(f"weights: this config needs pretrained weights and none is given. {WEIGHTS_HELP}")
  return out


def _options(config) -> dict[str, Any]:
  d = config.lisiam
  if d.variant not in VARIANTS:
    raise ConfigError(f"config.lisiam.variant={d.variant!r}; expected one of {VARIANTS} "
                      "(model F: variant 'A' with config.model.head='seg_logits')")
  if d.li_on not in losses_lib.LI_ON:
    raise ConfigError(f"config.lisiam.li_on={d.li_on!r}; expected one of {losses_lib.LI_ON}")
  from sjedd_jax.detectors.lisiam import data as data_lib  # pylint: disable=g-import-not-at-top
  if d.masks not in data_lib.MASK_SOURCES:
    raise ConfigError(f"config.lisiam.masks={d.masks!r}; expected one of {data_lib.MASK_SOURCES}")
  if d.variant in ("B", "C", "D", "E", "G") and config.model.head != "mt":
    raise ConfigError(f"config.lisiam.variant={d.variant!r} needs config.model.head='mt'")
  return {"variant": d.variant, "li_on": d.li_on}


# ----------------------------------------------------------------- the module
def build_module(config, seed: int):
  """The LiSiam module of ``config.model``, with the weights it names (release, earlier phase, ImageNet)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sjedd_jax.backbones.xception import params as xparams  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.lisiam import model as model_lib  # pylint: disable=g-import-not-at-top
  from sjedd_jax.weights import CheckpointError  # pylint: disable=g-import-not-at-top
  problems = check_weights(config)
  if problems:
    raise ConfigError("; ".join(problems))
  cfg = model_config(config)
  module = model_lib.LiSiam(cfg, rngs=nnx.Rngs(seed))
  m = config.model
  try:
    if m.get("release_checkpoint"):
      model_lib.load_release_state_dict(os.path.expanduser(m.release_checkpoint), module)
    elif m.get("init_from"):
      src = load_module(os.path.expanduser(m.init_from))
      model_lib.assign(module, model_lib.flatten(src), where=m.init_from)
    elif m.get("pretrained"):
      xparams.load_pretrained(os.path.expanduser(m.pretrained), module.backbone)
  except CheckpointError as e:
    raise ConfigError(f"config.model: {e}") from e
  return module


def param_labels(params) -> Any:
  """"seg" (backbone, OCR, aux head, segmentation decoder) or "cls" (SCU, MT, SE, MLP) per parameter."""
  from sjedd_jax.detectors.lisiam import model as model_lib  # pylint: disable=g-import-not-at-top

  def label(path, _):
    key = "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)
    return model_lib.param_group(key)

  return jax.tree_util.tree_map_with_path(label, params)


# ----------------------------------------------------------------- phases
# Spec section 4: (1) the segmentation modules only, (2) the classification modules only with
# L_cls, (3) everything. Phase-1 losses are not in the release [I: seg + li + aux].
PHASES = {
    "phase1": {"weights": (0.0, 1.0, 1.0, 0.4), "frozen": ("cls",)},
    "phase2": {"weights": (1.0, 0.0, 0.0, 0.0), "frozen": ("seg",)},
    "phase3": {"weights": WEIGHTS, "frozen": ()},
}


def apply_phase(c: ml_collections.ConfigDict, phase: str) -> ml_collections.ConfigDict:
  """Sets the task weights and frozen groups of training phase ``phase`` ("phase1".."phase3")."""
  if phase not in PHASES:
    raise ConfigError(f"LiSiam phase {phase!r}; expected one of {sorted(PHASES)}")
  p = PHASES[phase]
  c.weighting.fixed = tuple(p["weights"])
  c.weighting.lam_init = tuple(p["weights"])
  c.optim.frozen = tuple(p["frozen"])
  return c


# ----------------------------------------------------------------- losses
def make_task_losses(handle: interface.ModuleHandle, variant: str = "A", li_on: str = "logits"):
  """``task_losses(params, state, batch, rng, train) -> ([L_cls, L_seg, L_li, L_aux], state, aux)``.

  Variants (spec section 3, Table VI): A (LiSiam): cls1, seg1, aux1, li; B: + cls2, seg2,
  aux2 (branch 2 runs SCU/MT/MLP too; each task is the sum over the branches); C: cls1 + li
  (seg and aux logged, no gradient); D: cls2, seg2, aux2, li; E: one branch on view 2, no li;
  G: one branch over views 1 and 2 together (2B images), no li. Terms a variant does not
  train come back under ``stop_gradient`` (logged only) or as 0 (li of E and G).
  """
  sg = jax.lax.stop_gradient

  def full(model, x, train, key):
    o = model.segment(x, train)
    o["logits"] = model.classify(o["feats"], o["seg"], train, key)
    return o

  def terms(o, mask, y):
    return (losses_lib.cls_loss(o["logits"], y), losses_lib.seg_loss(o["seg"], mask),
            losses_lib.seg_loss(o["aux"], mask))

  def task_losses(params, state, batch, rng, train):
    model = handle.merge(params, state)
    x1, mask, y = batch["image"], batch["mask"], batch["y"]
    k1, k2 = jax.random.split(rng) if rng is not None else (None, None)
    zero = jnp.zeros((), jnp.float32)
    if variant in ("A", "C"):
      o1 = full(model, x1, train, k1)
      o2 = model.segment(batch["image2"], train)
      cls, seg, aux = terms(o1, mask, y)
      li = losses_lib.li_loss(o1["seg"], o2["seg"], li_on)
      if variant == "C":
        seg, aux = sg(seg), sg(aux)
      logits = o1["logits"]
    elif variant == "B":
      o1 = full(model, x1, train, k1)
      o2 = full(model, batch["image2"], train, k2)
      t1, t2 = terms(o1, mask, y), terms(o2, mask, y)
      cls, seg, aux = (a + b for a, b in zip(t1, t2))
      li = losses_lib.li_loss(o1["seg"], o2["seg"], li_on)
      logits = o1["logits"]
    elif variant == "D":
      o1 = model.segment(x1, train)
      o2 = full(model, batch["image2"], train, k2)
      cls, seg, aux = terms(o2, mask, y)
      li = losses_lib.li_loss(o1["seg"], o2["seg"], li_on)
      logits = o2["logits"]
    elif variant == "E":
      o2 = full(model, batch["image2"], train, k2)
      cls, seg, aux = terms(o2, mask, y)
      li, logits = zero, o2["logits"]
    elif variant == "G":
      x = jnp.concatenate([x1, batch["image2"]], axis=0)
      o = full(model, x, train, k1)
      m2, y2 = jnp.concatenate([mask, mask], axis=0), jnp.concatenate([y, y], axis=0)
      cls, seg, aux = terms(o, m2, y2)
      li, logits, y = zero, o["logits"][:x1.shape[0]], y
    else:
      raise ValueError(f"unknown LiSiam variant {variant!r}; expected one of {VARIANTS}")
    acc = losses_lib.accuracy(logits, y)
    return jnp.stack([cls, seg, li, aux]), handle.state_of(model), {"accuracy": acc}

  return task_losses


# ----------------------------------------------------------------- the detector
def make(config, module=None) -> interface.Detector:
  """The LiSiam detector of ``config`` (``config.model``, ``config.lisiam``); ``module``: a built
  module to wrap instead of building one in ``init`` (exports)."""
  from sjedd_jax.detectors.lisiam import data as data_lib  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.lisiam import viz  # pylint: disable=g-import-not-at-top
  opts = _options(config)
  cfg = model_config(config) if module is None else module.config
  size = int(config.data.image_size)
  handle = interface.ModuleHandle(NAME)
  d = config.lisiam
  try:
    side = int(d.get("eval_mask_size", 0) or 0) or data_lib.map_size(cfg.backbone, size)
  except ValueError as e:
    raise ConfigError(f"config.data.image_size={size}: {e}") from e
  from sjedd_jax.data import degrade  # pylint: disable=g-import-not-at-top
  transform = data_lib.Transform(size, side, d.masks,
                                 degrade.ViewParams.for_size(size, p_shuffle=float(d.get("p_shuffle", 0.0))))
  video_vote = bool(d.get("video_vote", True))

  def label_fn(rec):
    return {"y": np.asarray([float(rec.is_fake)], np.float32)}

  def init(seed):
    return handle.split(module if module is not None else build_module(config, seed))

  def predict(params, state, images):
    out = handle.merge(params, state)(images, train=False)
    return {"p_fake": jax.nn.softmax(out["logits"], axis=-1)[:, 1],
            "mask_prob": jax.nn.softmax(out["seg"], axis=-1)[..., 1]}

  def eval_metrics(outputs, labels):
    own = {}
    if "mask_prob" in outputs and "mask" in labels and "y" in labels:
      own["localisation"] = metrics_lib.localisation(outputs["mask_prob"], labels["mask"], labels["y"])
    if "mask_prob" in outputs and "mask_prob2" in outputs:
      own["view_consistency"] = metrics_lib.view_consistency(outputs["mask_prob"], outputs["mask_prob2"])
    if video_vote and "video" in labels and "p_fake" in outputs:
      truth = labels.get("is_fake", labels.get("y"))
      own["video_vote_acc"] = metrics_lib.video_vote_accuracy(outputs["p_fake"], truth, labels["video"])
    return {NAME: own} if own else {}

  def export_fn(variables, out_dir, cfg_=None):
    return export(handle.merge(jax.device_get(variables.params), jax.device_get(variables.state)), out_dir,
                  cfg_ if cfg_ is not None else config)

  return interface.Detector(
      name=NAME, task_names=TASK_NAMES, batch_keys=("image", "image2", "mask") + LABEL_KEYS, label_fn=label_fn,
      init=init, task_losses=make_task_losses(handle, **opts), predict=predict, image_size=size, mean=MEAN,
      std=STD, primary=PRIMARY, eval_metrics=eval_metrics, describe=viz.describe, plot=viz.plot,
      export=export_fn, param_labels=param_labels, bind=handle.merge, transform=transform,
      image_keys=("image", "image2"), compiler_options=xla_cpu.from_model_config(config.model))


def prepare_data(config, data_dir: str, progress: bool = True) -> None:
  """Makes the masks ``config.lisiam.masks`` needs in ``data_dir`` (synthetic worlds); the hook a
  dataset builder can call after making the data (else the transform makes them on first use)."""
  from sjedd_jax.detectors.lisiam import data as data_lib  # pylint: disable=g-import-not-at-top
  data_lib.prepare_data(config, data_dir, progress=progress)


# ----------------------------------------------------------------- export
def _to_dict(config):
  if config is None:
    return None
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def export(module, out_dir: str, config=None) -> str:
  """Writes ``lisiam.json`` (model config, training config), ``lisiam.safetensors`` (parameters and
  BatchNorm statistics) and ``detector.json``, atomically (``out_dir.tmp`` renamed)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from sjedd_jax import detectors  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.lisiam import model as model_lib  # pylint: disable=g-import-not-at-top

  def write(tmp):
    os.makedirs(tmp)
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in model_lib.flatten(module).items()},
              os.path.join(tmp, EXPORT_WEIGHTS))

  meta = {"model": module.config.to_dict(), "config": _to_dict(config)}
  return detectors.write_export(out_dir, NAME, write, EXPORT_MARKER, meta)


def _read_meta(path: str) -> dict:
  from sjedd_jax import detectors  # pylint: disable=g-import-not-at-top
  return detectors.read_export_meta(path, EXPORT_MARKER, what="a LiSiam model")


def load_module(path: str, dtype: str | None = None):
  """The LiSiam module saved by ``export``."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.lisiam import model as model_lib  # pylint: disable=g-import-not-at-top
  meta = _read_meta(path)
  cfg = model_lib.LiSiamConfig.from_dict(meta["model"])
  if dtype:
    cfg = cfg.replace(dtype=dtype, backbone=cfg.backbone.replace(dtype=dtype))
  weights = os.path.join(path, EXPORT_WEIGHTS)
  if not os.path.exists(weights):
    raise FileNotFoundError(f"{path}: no {EXPORT_WEIGHTS}")
  module = nnx.eval_shape(lambda: model_lib.LiSiam(cfg, rngs=nnx.Rngs(0)))
  return model_lib.assign(module, load_file(weights), where=weights)


def load_export(path: str, dtype: str | None = None) -> tuple[interface.Detector, interface.Variables]:
  """``(Detector, Variables)`` of a LiSiam export (no config needed)."""
  from sjedd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  meta = _read_meta(path)
  module = load_module(path, dtype=dtype)
  base = config_lib.base_config(NAME)
  saved = meta.get("config") or {}
  config = base
  if saved:
    config = ml_collections.ConfigDict(saved)
    for key in ("model", "lisiam"):   # fields added since the export was written keep their defaults
      merged = base[key].to_dict()
      merged.update(saved.get(key) or {})
      config[key] = ml_collections.ConfigDict(merged)
  det = make(config, module=module)
  return det, det.init(0)
