"""Contrastive MIL + multi-label ranking (Hong, Hsu, Liu, CVPR 2024) as a detector (spec mil_ranking.md).

What this package owns:

* ``modules.py``  FPN, tokens, encoder phi, similarity list u, patch/class heads (section 2);
* ``model.py``    the whole network (ResNet from ``sjedd_jax.backbones.resnet`` + the MIL head),
                  built from ``config.model``; its variables on disk (exports);
* ``losses.py``   contrastive MIL (L_CLS), multi-label BCE (L_BCE^U, L_BCE^V), rank loss (section 3);
* ``labels.py``   manipulation sequences <-> (y, r, J), decoding, the Seq-DeepFake CSVs (sections 1, 5);
* ``metrics.py``  Fixed-Acc, Adaptive-Acc, multi-label / exact-set / pairwise-order accuracy, R^2;
* ``augment.py``  the release's ColorJitter (torchvision on PIL), the detector's ``transform``.

Tasks: ``("cls", "bce_u", "bce_v", "rank")`` = [L_CLS, lambda_1 L_BCE^U, lambda_1 L_BCE^V,
lambda_2 L_Rank] (Eq. 15 with the lambdas folded into the task losses, so the weighting's
weights are multipliers on top of them: fixed (1, 1, 1, 1) is the paper's total). The loss
switches of Table 3 (``model.use_cls``, ``use_bce_u``, ``use_bce_v``, ``use_rank``) zero a task's
loss (a constant 0: no gradient, no hypergradient, its lambda never moves). The binary task
keeps the same four tasks with L = 1 and ``use_rank=False`` (spec: lambda_2 = 0), so every
config of this detector has the same metric names and state layout.

The factors (lambdas x switches) travel in the batch: ``label_fn`` adds ``task_scale`` (4,),
the same row for every example, and ``task_losses`` multiplies by it (without that key, by
the config's factors). They are then data, not constants compiled into the step, so configs
that differ only in them (the Table 3 rows, lambda sweeps) share one compiled program: one
compilation per session, and hits of the persistent compilation cache across runs.

Bi-level outer loss (spec section 10, ``Detector.primary``): L_Rank (0, 0, 0, 1), the loss
closest to Fixed-Acc; with the rank loss off, L_CLS (1, 0, 0, 0) (the binary task); with both
off, the BCE tasks that are on. ``config.weighting.primary`` overrides it.

Rank weights within a step (section 10). w (restated Eq. 14) is piecewise constant in the
parameters and enters only through stop-gradient. The shared step evaluates ``task_losses``
at theta (``jax.linearize``: the task losses, their gradient and, with ``method="jvp"``, the
exact hypergradient as a tangent of that same linearisation), at theta' on the validation
batch (which computes its own w at theta', stop-gradient, as the spec asks) and, only with
``method="finite_difference"``, again at theta +- eps d. With "jvp" (this detector's default,
``weighting.method``) w is computed once, at theta, and held fixed for the whole step. With
"finite_difference" the two extra passes would recompute w at theta +- eps d, and a rank swap
between them would make the difference jump; so with that method the detector's pre-pass
(``Detector.prepare``, run once at theta by the shared step) puts w in the batch
(``batch["rank_weights"]`` (B, L), stop-gradient), which ``task_losses`` then uses in every pass
(``rank_weights_at(detector, params, state, batch, rng, model=config.model)`` computes the same
outside a step).

Scores: ``predict -> {"p_fake", "probs" (B, L), "logits" (B, L), "mil_prob" (B,)}``.
``p_fake`` is the MIL score P(x) (Eq. 9) for the sequence task, sigmoid(f) for the binary
one (L = 1) and max_i P_i when L_CLS is off (Table 3 rows I, III) (``model.score="auto"``;
"mil" or "fused" (max_i P_i) to choose). "probs" are the
per-component P_i = sigmoid(f_i) of the decoding head (``model.decode_from``: the fused f,
or, when only one BCE head is trained and the rank loss is off (Table 3 rows I and II),
that head's logits).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from sjedd_jax import xla_cpu
from sjedd_jax.backbones import resnet as resnet_backbone
from sjedd_jax.config import ConfigError
from sjedd_jax.detectors import interface
from sjedd_jax.detectors.mil_ranking import labels as labels_lib
from sjedd_jax.detectors.mil_ranking import losses as losses_lib
from sjedd_jax.detectors.mil_ranking import metrics as metrics_lib

NAME = "mil_ranking"
PAPER = "Contrastive MIL + multi-label ranking for sequential deepfakes (Hong, Hsu, Liu, CVPR 2024)"
BACKBONE = "ResNet + FPN + transformer encoder (MIL head)"
TASK_NAMES = losses_lib.LOSS_NAMES          # ("cls", "bce_u", "bce_v", "rank")
LABEL_KEYS = ("y", "r", "J", "seq", "task_scale")
TRAIN_KEYS = ("image", "y", "r", "J", "task_scale")   # what task_losses reads
EXPORT_MARKER = "mil_ranking.json"
EXPORT_FORMAT = 1
SYNTHETIC_CONFIG = "mil_ranking/synthetic.py"   # configs/<this>: the CPU twin (scripts/compare_detectors.py)
NORMALISATIONS = {"half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),            # SeqFakeFormer [R]
                  "imagenet": (resnet_backbone.MEAN, resnet_backbone.STD)}
SCORES = ("auto", "mil", "fused")
DECODE_FROM = ("auto", "fused", "fU", "fV")

WEIGHTS_HELP = (
    "Give a local ImageNet ResNet checkpoint with --config.model.backbone_pretrained=PATH: torchvision's "
    "resnet34-b627a593.pth / resnet50-0676ba61.pth (or -19c8e357), timm's resnet34/resnet50 "
    "(model.safetensors or pytorch_model.bin), or a SeqFakeFormer checkpoint (backbone.0.body.* keys). "
    "Weights cannot be downloaded at run time.")


# ----------------------------------------------------------------- config
def model_defaults() -> ml_collections.ConfigDict:
  """``config.model``: the spec's defaults ([P] where stated, else [R], else [I] as marked there)."""
  m = ml_collections.ConfigDict()
  m.backbone = "resnet34"              # ResNet preset: resnet18/34/50/101 (Table 1 * / †), "tiny" (twin)
  m.backbone_overrides = ml_collections.ConfigDict()   # ResNetConfig fields over the preset
  m.backbone_pretrained = ""           # local torchvision/timm/SeqFakeFormer ResNet weights, loaded by init
  m.require_pretrained = False         # True: refuse to start from a random backbone
  m.frozen_stages = ("stem", "layer1")  # not trained [R: SeqFakeFormer freezes stem + layer1]; () trains all
  m.num_components = 5                 # L (1: the binary task)
  m.components = "facial_components"   # names of the ids: a Seq-DeepFake subset or a comma list
  m.fpn_level = "P4"                   # P4 (stride 16; default [I]), "P3", "P5"
  m.dim = 256                          # d
  m.encoder_layers = 2                 # phi [I: SeqFakeFormer's encoder]
  m.encoder_heads = 4
  m.encoder_ffn = 512
  m.dropout = 0.1
  m.pos_encoding = "sine"              # [I] DETR's 2-D sine encoding, or "none"
  m.pos_mode = "input"                 # added to U once ("input") or to q/k in every layer ("qk")
  m.pos_scale = 1.0
  m.class_token_std = 0.02
  m.tau = 0.1                          # P(x;k) temperature [I]
  m.alpha = 1.0                        # rank-weight scale (only alpha * lambda_2 matters)
  m.lambda_1 = 1.0                     # Eq. 15 [I]
  m.lambda_2 = 1.0
  m.k_grid = 100                       # k values on the fixed grid round(linspace(1, n-1, K)); 0: every k
  m.reg_reduce = "mean"                # l_Reg over the n pairs: "mean" [I] or "sum" (Eq. 11 as printed)
  m.rank_target = "binary"             # target of l in L_Rank: "binary" (y, Eq. 13) or "graded" ([I], losses.py)
  m.rank_floor = 0.0                   # w_i >= alpha * floor on manipulated components (0: Eq. 14; [I], losses.py)
  m.use_cls = True                     # Table 3 switches: L_CLS, L_BCE^U, L_BCE^V, L_Rank
  m.use_bce_u = True
  m.use_bce_v = True
  m.use_rank = True
  m.pointwise = "auto"                 # 1x1 convs: "matmul" (2-5x faster on XLA:CPU), "xla", "auto" (matmul on CPU); same function
  m.strided = "auto"                   # strided 3x3 convs' input gradient: "phases" (one stride-1 conv per phase), "xla", "auto" (phases on CPU); same function
  m.cpu_kernels = "auto"               # XLA:CPU's conv/matmul kernels: "eigen", "ynnpack" (XLA's default), "auto" (eigen); xla_cpu.py
  m.score = "auto"                     # p_fake: "auto" (P(x); sigmoid(f) when L = 1), "mil", "fused"
  m.decode_from = "auto"               # per-component scores: "auto", "fused" (f), "fU", "fV"
  m.threshold = 0.5                    # predicted set {P_i > threshold}
  m.gate_decoding = False              # [I] option: P(x) < 0.5 -> original
  m.normalization = "half"             # input mean/std: "half" (0.5, SeqFakeFormer [R]) or "imagenet"
  m.dtype = "float32"                  # compute dtype; "bfloat16" for speed (parameters stay float32)
  return m


def defaults(c: ml_collections.ConfigDict) -> None:
  """This detector's fields: ``config.model``, the Seq-DeepFake input (256 px, flip, ColorJitter,
  no SJEDD perturbations) and the weighting of its four tasks (section 10: exact hypergradient)."""
  c.model = model_defaults()
  c.data.image_size = 256
  c.data.hflip = True                    # [R] RandomHorizontalFlip(0.5)
  c.data.perturb_probability = 0.0       # the release has no such perturbations
  c.data.color_jitter = True             # [R] ColorJitter(brightness [0.5, 1.3], contrast [0.8, 1.5], saturation [0.2, 1.5])
  c.weighting.kind = "fixed"             # Eq. 15 (the paper); "bilevel" for section 10
  c.weighting.fixed = (1.0, 1.0, 1.0, 1.0)   # the lambdas are inside the task losses
  c.weighting.lam_init = 1.0
  c.weighting.method = "jvp"             # w held fixed within a step (module docstring)
  c.weighting.nonneg = True              # a negative weight would reward a wrong order / set
  c.weighting.update_every = 4


def component_names(m) -> tuple[str, ...]:
  """Names of the component ids 1..L from ``config.model.components`` (a subset name or a comma list)."""
  spec, num = m.get("components", ""), int(m.num_components)
  if num == 1 and (not spec or spec in labels_lib.COMPONENTS):
    return ("fake",)
  if spec in labels_lib.COMPONENTS:
    names = labels_lib.COMPONENTS[spec]
  elif spec:
    names = tuple(s.strip() for s in str(spec).split(",") if s.strip())
  else:
    names = tuple(f"component {i}" for i in range(1, num + 1))
  if len(names) != num:
    raise ConfigError(f"config.model.components={spec!r} names {len(names)} components but "
                      f"config.model.num_components={num}")
  return names


def loss_config(m) -> losses_lib.LossConfig:
  k = int(m.k_grid)
  try:
    return losses_lib.LossConfig(tau=float(m.tau), alpha=float(m.alpha), k_grid="all" if k == 0 else k,
                                 reg_reduce=m.reg_reduce, rank_target=m.get("rank_target", "binary"),
                                 rank_floor=float(m.get("rank_floor", 0.0)))
  except ValueError as e:
    raise ConfigError(f"config.model: {e} (k_grid 0 means every k)") from None


def switches(m) -> tuple[bool, bool, bool, bool]:
  return (bool(m.use_cls), bool(m.use_bce_u), bool(m.use_bce_v), bool(m.use_rank))


def task_scale(m) -> tuple[float, float, float, float]:
  """The factors on [L_CLS, L_BCE^U, L_BCE^V, L_Rank]: Eq. 15's lambdas times the switches."""
  lam = (1.0, float(m.lambda_1), float(m.lambda_1), float(m.lambda_2))
  return tuple(l * float(s) for l, s in zip(lam, switches(m)))


def primary_weights(m) -> tuple[float, float, float, float]:
  """The bi-level outer loss: L_Rank; else L_CLS; else the BCE tasks that are on (module docstring)."""
  cls, bu, bv, rank = switches(m)
  if rank:
    return (0.0, 0.0, 0.0, 1.0)
  if cls:
    return (1.0, 0.0, 0.0, 0.0)
  return (0.0, float(bu), float(bv), 0.0)


def decode_head(m) -> str:
  """The logits the per-component scores come from (``config.model.decode_from``)."""
  choice = m.get("decode_from", "auto")
  if choice not in DECODE_FROM:
    raise ConfigError(f"config.model.decode_from={choice!r}; expected one of {DECODE_FROM}")
  if choice != "auto":
    return choice
  _, bu, bv, rank = switches(m)
  if rank or bu == bv:
    return "f"
  return "fU" if bu else "fV"


def score_kind(m) -> str:
  choice = m.get("score", "auto")
  if choice not in SCORES:
    raise ConfigError(f"config.model.score={choice!r}; expected one of {SCORES}")
  if choice != "auto":
    return choice
  return "fused" if int(m.num_components) == 1 or not m.use_cls else "mil"


def check_model(config) -> None:
  """Refuses a ``config.model`` that cannot train (with the field named)."""
  m = config.model
  if int(m.num_components) < 1:
    raise ConfigError(f"config.model.num_components={m.num_components} must be >= 1")
  if not any(switches(m)):
    raise ConfigError("config.model: every loss is switched off (use_cls, use_bce_u, use_bce_v, use_rank)")
  if int(m.num_components) == 1 and m.use_rank:
    raise ConfigError("config.model.use_rank=True with num_components=1: the binary task has no order "
                      "(spec: lambda_2 = 0); set config.model.use_rank=False")
  if m.normalization not in NORMALISATIONS:
    raise ConfigError(f"config.model.normalization={m.normalization!r}; expected one of {sorted(NORMALISATIONS)}")
  unknown = sorted(set(m.frozen_stages) - set(resnet_backbone.STAGES))
  if unknown:
    raise ConfigError(f"config.model.frozen_stages names {unknown}; stages are {list(resnet_backbone.STAGES)}")
  if not 0.0 < float(m.threshold) < 1.0:
    raise ConfigError(f"config.model.threshold={m.threshold} must be in (0, 1)")
  component_names(m)
  loss_config(m)
  decode_head(m)
  score_kind(m)


def check_weights(config) -> list[str]:
  """Problems with the backbone weights (for the trainer's preflight), as sentences."""
  m = config.model
  path = m.get("backbone_pretrained", "")
  if path and not os.path.exists(os.path.expanduser(path)):
    return [f"weights: config.model.backbone_pretrained={path!r} does not exist. {WEIGHTS_HELP}"]
  if not path and m.get("require_pretrained", False):
    return [f"weights: config.model.backbone_pretrained is empty and this config needs ImageNet ResNet "
            f"weights. {WEIGHTS_HELP}"]
  return []


# ----------------------------------------------------------------- labels
def make_label_fn(num_components: int = 5, num_slots: int = labels_lib.NUM_SLOTS, task_scale=None):
  """``record -> {"y" (L,), "r" (L,), "J" (), "seq" (5,)[, "task_scale" (4,)]}`` from ``Record.sequence``.

  ``sequence`` lists the manipulated component ids (1-based) in order ([] or None:
  none). With L = 1 (the binary task) a fake record is component 1, whatever its
  sequence. Otherwise a record without a sequence is real when ``is_fake`` is 0 and an
  error when it is 1. A sequence that
  contradicts ``is_fake``, repeats an id or names one outside 1..L is refused
  (``labels.SequenceError``, which the pipeline reports with the record). ``task_scale``
  (the 4 task factors, module docstring) is added to every record's targets when given.
  """
  num = int(num_components)
  scale = None if task_scale is None else np.asarray(task_scale, np.float32).reshape(len(TASK_NAMES))

  def label_fn(rec) -> dict[str, np.ndarray]:
    where = getattr(rec, "path", "")
    seq = rec.sequence
    if num == 1:  # the binary task: fake or not, whatever the components
      seq = (1,) if rec.is_fake else ()
    elif seq is None:
      if not rec.is_fake:
        seq = ()
      else:
        raise labels_lib.SequenceError(f"{where}: a fake record without a 'sequence' (the sequential task "
                                       f"needs the manipulated components in order)")
    seq = labels_lib.validate(seq, num, where)
    if bool(seq) != bool(rec.is_fake):
      raise labels_lib.SequenceError(f"{where}: sequence {list(seq)} contradicts is_fake={rec.is_fake}")
    if len(seq) > num_slots:
      raise labels_lib.SequenceError(f"{where}: sequence {list(seq)} is longer than {num_slots} slots")
    y, r, j = labels_lib.encode(seq, num)
    out = {"y": y, "r": r.astype(np.float32), "J": np.float32(j),
           "seq": np.asarray(labels_lib.pad(seq, num_slots), np.float32)}
    if scale is not None:
      out["task_scale"] = scale.copy()
    return out

  return label_fn


# ----------------------------------------------------------------- jnp helpers
def pairwise_order(scores: jax.Array, y: jax.Array, r: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(correct, total) ordered pairs of a batch: pairs i, j in Y with r_i < r_j and score_i > score_j."""
  yb = y > 0.5
  both = yb[:, :, None] & yb[:, None, :]
  before = r[:, :, None] < r[:, None, :]
  pairs = (both & before).astype(jnp.float32)
  right = (scores[:, :, None] > scores[:, None, :]).astype(jnp.float32)
  return jnp.sum(pairs * right), jnp.sum(pairs)


def mil_score(u: jax.Array, cfg: losses_lib.LossConfig) -> jax.Array:
  return losses_lib.mil_probability(u, cfg.tau, cfg.k_grid)


# ----------------------------------------------------------------- the detector
def holds_rank_weights(config) -> bool:
  """True when the run's step needs w held by a pre-pass (``Detector.prepare``): bi-level weighting
  with finite differences (with "jvp" the one linearisation at theta already holds it)."""
  w = config.get("weighting") if config is not None else None
  return bool(w is not None and w.get("kind") == "bilevel" and w.get("method") == "finite_difference")


def detector_from(m, *, image_size: int, init, handle: interface.ModuleHandle, transform=None,
                  config=None) -> interface.Detector:
  """The ``Detector`` of ``config.model`` ``m`` whose module ``init(seed)`` builds."""
  cfg = loss_config(m)
  scale = np.asarray(task_scale(m), np.float32)
  head = decode_head(m)
  score = score_kind(m)
  names = component_names(m)
  num = int(m.num_components)
  threshold = float(m.threshold)
  logit_threshold = math.log(threshold / (1.0 - threshold))
  gate = bool(m.get("gate_decoding", False))
  mean, std = NORMALISATIONS[m.normalization]

  def forward(params, state, images, train, rng):
    model = handle.merge(params, state)
    return model, model(images, train=train, rng=rng)

  def task_losses(params, state, batch, rng, train):
    model, out = forward(params, state, batch["image"], train, rng)
    vec, aux = losses_lib.loss_vector_and_aux(out, batch, cfg, batch.get("rank_weights"))
    factors = jnp.max(batch["task_scale"], axis=0) if "task_scale" in batch else scale
    y, r = batch["y"], batch["r"]
    j = batch["J"] > 0.5
    f = jax.lax.stop_gradient(out["f"])   # training metrics of the fused head (the same program for every row)
    right, total = pairwise_order(f, y, r)
    metrics = {
        "accuracy": jnp.mean(jnp.all((f > logit_threshold) == (y > 0.5), axis=-1).astype(jnp.float32)),
        "mil_accuracy": jnp.mean(((aux["mil_prob"] > 0.5) == j).astype(jnp.float32)),
        "order_accuracy": right / jnp.maximum(total, 1.0),
        "mil_prob_real": jnp.sum(aux["mil_prob"] * ~j) / jnp.maximum(jnp.sum(~j), 1),
        "mil_prob_fake": jnp.sum(aux["mil_prob"] * j) / jnp.maximum(jnp.sum(j), 1),
        "rank_weight_mean": jnp.mean(aux["rank_weights"]),
    }
    return vec * factors, handle.state_of(model), metrics

  def predict(params, state, images):
    _, out = forward(params, state, images, False, None)
    logits = out[head]
    probs = jax.nn.sigmoid(logits)
    mil = mil_score(out["u"], cfg)
    p_fake = mil if score == "mil" else jnp.max(probs, axis=-1)
    return {"p_fake": p_fake, "probs": probs, "logits": logits, "mil_prob": mil}

  def eval_metrics(outputs, labels):
    if "logits" not in outputs or "seq" not in labels:
      return {}
    seq = np.rint(np.asarray(labels["seq"])).astype(np.int64)
    logits = np.asarray(outputs["logits"], np.float64)
    mil = np.asarray(outputs["mil_prob"], np.float64)
    out = metrics_lib.sequence_metrics(logits, seq, threshold=logit_threshold, component_names=names,
                                       mil_scores=mil if gate else None)
    j = (seq > 0).any(axis=1)
    out["mil_auc"] = _auc(mil, j)
    out["max_prob_auc"] = _auc(np.max(logits, axis=1), j)
    return {"sequence": out}

  def describe(outputs, *, threshold: float = 0.5, subject: str = "face image"):
    del threshold  # the sequence uses the model's own threshold; p_fake/fake are the caller's
    logits = np.asarray(outputs["logits"], np.float64).reshape(num)
    mil = float(np.asarray(outputs["mil_prob"]).reshape(()))
    pred = labels_lib.decode_predictions(logits, logit_threshold, labels_lib.NUM_SLOTS,
                                         np.asarray([mil]) if gate else None, 0.5)
    seq = [names[i - 1] for i in pred if i]
    probs = np.asarray(outputs["probs"], np.float64).reshape(num)
    text = (f"The {subject} shows no manipulated component." if not seq else
            f"The {subject} was manipulated in this order: {' -> '.join(seq)}.")
    return {"sequence": seq, "sequence_ids": [int(i) for i in pred],
            "components": {n: float(p) for n, p in zip(names, probs)}, "mil_score": mil, "explanation": text}

  def plot(outputs, path, *, title: str, image=None, threshold: float = 0.5, face=None):
    """Bar chart of the components' P_i, the decoded ones numbered in their order, and P(x) (``viz.py``)."""
    del image, threshold   # the face crop the model saw is drawn instead; the model's own threshold decodes
    from sjedd_jax.detectors.mil_ranking import viz  # pylint: disable=g-import-not-at-top
    d = describe(outputs)
    return viz.plot_sequence(outputs["probs"], d["sequence_ids"], names, path, title=title,
                             threshold=float(m.threshold), mil_score=d["mil_score"], face=face)

  def param_labels(params):
    return interface.tree_labels(params, [("backbone", "backbone")], "head")

  def export_fn(variables, out_dir, run_config=None):
    return export(handle.merge(jax.device_get(variables.params), jax.device_get(variables.state)), out_dir,
                  m, image_size=image_size, config=run_config if run_config is not None else config)

  def prepare(params, state, batch):
    """w at theta (stop-gradient) in the batch, so the finite-difference passes at theta +- eps d use it too."""
    _, out = forward(params, state, batch["image"], True, batch.get("rng"))
    w = losses_lib.rank_weights(out["f"], batch["y"], batch["r"], cfg.alpha, cfg.rank_floor)
    return {**batch, "rank_weights": jax.lax.stop_gradient(w)}

  return interface.Detector(
      prepare=prepare if holds_rank_weights(config) else None,
      name=NAME, task_names=TASK_NAMES, batch_keys=TRAIN_KEYS, label_fn=make_label_fn(num, task_scale=task_scale(m)),
      init=init,
      task_losses=task_losses, predict=predict, image_size=int(image_size), mean=tuple(mean), std=tuple(std),
      primary=primary_weights(m), eval_metrics=eval_metrics, describe=describe, plot=plot, export=export_fn,
      param_labels=param_labels, bind=handle.merge, transform=transform,
      compiler_options=xla_cpu.from_model_config(m))


def rank_weights_at(detector: interface.Detector, params, state, batch, rng=None, alpha: float = 1.0,
                    floor: float = 0.0, *, model=None) -> jax.Array:
  """w (B, L) at ``params`` (a training forward, stop-gradient): a caller's pre-pass puts it in the
  batch as ``"rank_weights"`` to hold w fixed in every pass of a step (module docstring).
  ``model``: the run's ``config.model``, whose ``alpha`` and ``rank_floor`` then replace ``alpha``, ``floor``."""
  if model is not None:
    cfg = loss_config(model)
    alpha, floor = cfg.alpha, cfg.rank_floor
  out = detector.bind(params, state)(batch["image"], train=True, rng=rng)
  return jax.lax.stop_gradient(losses_lib.rank_weights(out["f"], batch["y"], batch["r"], alpha, floor))


def _auc(scores: np.ndarray, positive: np.ndarray) -> float | None:
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  positive = np.asarray(positive, bool)
  if positive.all() or not positive.any():
    return None
  return float(roc_auc_score(positive, scores))


def transform_from_config(config):
  """The ColorJitter of ``config.data.color_jitter`` (None when off)."""
  if not config.data.get("color_jitter", False):
    return None
  from sjedd_jax.detectors.mil_ranking import augment  # pylint: disable=g-import-not-at-top
  return augment.ColorJitter()


def build_module(config, seed: int = 0):
  """The module of a run: random init, then the backbone's ImageNet weights when given."""
  from sjedd_jax.detectors.mil_ranking import model as model_lib  # pylint: disable=g-import-not-at-top
  try:
    module = model_lib.build(config.model, seed)
  except model_lib.ModelError as e:
    raise ConfigError(str(e)) from None
  path = config.model.get("backbone_pretrained", "")
  if path:
    if not os.path.exists(os.path.expanduser(path)):
      raise ConfigError(f"config.model.backbone_pretrained={path!r} does not exist. {WEIGHTS_HELP}")
    model_lib.load_backbone(module, path)
  return module


def _handle(m) -> interface.ModuleHandle:
  from sjedd_jax.detectors.mil_ranking import model as model_lib  # pylint: disable=g-import-not-at-top
  frozen = tuple(m.frozen_stages)
  return interface.ModuleHandle(NAME, lambda module: model_lib.trainable_filter(frozen))


def make(config) -> interface.Detector:
  """The detector of ``config`` (``config.model``, ``config.data.image_size``, ``config.data.color_jitter``)."""
  check_model(config)
  from sjedd_jax.detectors.mil_ranking import model as model_lib  # pylint: disable=g-import-not-at-top
  try:
    model_lib.backbone_config(config.model)
  except model_lib.ModelError as e:
    raise ConfigError(str(e)) from None
  handle = _handle(config.model)
  return detector_from(config.model, image_size=config.data.image_size,
                       init=lambda seed: handle.split(build_module(config, seed)), handle=handle,
                       transform=transform_from_config(config), config=config)


def summarize(results: Mapping[str, Any]) -> dict[str, float]:
  """The sequence metrics of one test set, for tables (fractions)."""
  s = results.get("sequence") or {}
  keys = (("pairwise order acc", "pairwise_order_acc"), ("Fixed-Acc", "fixed_acc"),
          ("Adaptive-Acc", "adaptive_acc"), ("MIL AUC", "mil_auc"))
  return {name: float(s[k]) for name, k in keys if s.get(k) is not None and s[k] == s[k]}


# ----------------------------------------------------------------- export
def _to_dict(config):
  if config is None:
    return None
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def export(module, out_dir: str, m, *, image_size: int, config=None) -> str:
  """Writes an inference export: ``params.safetensors`` (every variable of the module by NNX path,
  BatchNorm statistics and frozen stages included), ``mil_ranking.json`` (``config.model``, the input
  size, the component names, the run's config) and ``detector.json``; atomically (``out_dir.tmp``)."""
  from sjedd_jax import detectors  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.mil_ranking import model as model_lib  # pylint: disable=g-import-not-at-top

  def write(tmp):
    os.makedirs(tmp)
    model_lib.save(module, os.path.join(tmp, model_lib.WEIGHTS_FILE))

  meta = {"format": EXPORT_FORMAT, "model": _to_dict(m), "image_size": int(image_size),
          "components": list(component_names(m)), "task_names": list(TASK_NAMES), "config": _to_dict(config)}
  return detectors.write_export(out_dir, NAME, write, EXPORT_MARKER, meta,
                                weights=model_lib.WEIGHTS_FILE, image_size=int(image_size))


def _model_config(stored: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """``config.model`` of an export: today's defaults with the stored values (lists back to tuples)."""
  m = model_defaults()
  for k, v in stored.items():
    if k not in m:
      raise ValueError(f"unknown model field {k!r}")
    if isinstance(m[k], ml_collections.ConfigDict):
      m[k] = ml_collections.ConfigDict(v or {})
    elif isinstance(m[k], tuple):
      m[k] = tuple(v)
    else:
      m[k] = v
  return m


def load_export(path: str, dtype: str | None = None) -> tuple[interface.Detector, interface.Variables]:
  """The detector and variables of an export written by ``export`` (no config needed)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.mil_ranking import model as model_lib  # pylint: disable=g-import-not-at-top
  path = os.path.expanduser(os.fspath(path))
  meta_path = os.path.join(path, EXPORT_MARKER)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{path}: no {EXPORT_MARKER}; not a mil_ranking model exported by sjedd_jax.train")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    m = _model_config(meta["model"])
    image_size = int(meta["image_size"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise FileNotFoundError(f"{meta_path}: not a valid mil_ranking export description "
                            f"({type(e).__name__}: {e})") from None
  m.backbone_pretrained = ""
  if dtype:
    m.dtype = dtype
  try:
    module = nnx.eval_shape(lambda: model_lib.build(m, 0))
  except model_lib.ModelError as e:
    raise FileNotFoundError(f"{meta_path}: {e}") from None
  model_lib.load(module, os.path.join(path, model_lib.WEIGHTS_FILE))
  handle = _handle(m)
  variables = handle.split(module)
  return detector_from(m, image_size=image_size, init=lambda seed: variables, handle=handle), variables
