"""MC-LCR (Wang et al., KBS 2022) as a detector: Xception + SSRB + patch-spectra PAPDA, CE + SupCon.

Spec: ``/work/shared/spec/mc_lcr.md``. What this package owns:

* ``modules.py``  SSRB, patch spectra, PAPDA, MLP-Mixers, the fusion heads (``MCLCRHead``);
* ``model.py``    the whole model (Xception from ``sjedd_jax.backbones.xception`` + the head),
                  ``MCLCRConfig`` and the flat state an export stores;
* ``losses.py``   BCE from the logit, the supervised contrastive loss, the cosine separation.

Tasks: ``("ce", "supcon")`` = [L_CE, L_SC]. The paper's Eq. 15 is fixed weights
(1 - alpha, alpha) = (0.5, 0.5) (``weighting.kind="fixed"``, the configs in
``configs/mc_lcr/``); with the bi-level weighting (spec section 10) the outer loss is
L_CE alone (``primary = (1, 0)``), lambda starts at (0.5, 0.5) and stays >= 0.

Inputs are normalised as Xception's ImageNet weights expect ((x - 0.5) / 0.5:
``Detector.mean/std``); the model undoes it for the grey patch spectra. BatchNorm
statistics are the detector's model state (``task_losses`` returns the updated
ones); dropout draws from the step's key. ``predict`` gives ``p_fake`` and the
embedding ``z``; ``eval_metrics`` the mean cosine of z within class minus across
classes over a split (spec section 9 check 2).
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
from sjedd_jax.backbones import xception as xception_backbone
from sjedd_jax.config import ConfigError
from sjedd_jax.detectors import interface
from sjedd_jax.detectors.mc_lcr import losses as losses_lib

NAME = "mc_lcr"
PAPER = "MC-LCR: multi-modal contrastive classification by locally correlated representations (KBS 2022)"
BACKBONE = "Xception + patch amplitude/phase spectra (PAPDA, MLP-Mixers)"
TASK_NAMES = ("ce", "supcon")
LABEL_KEYS = ("y",)
EXPORT_MARKER = "mc_lcr.json"
MODEL_FILE = "model.safetensors"
EXPORT_FORMAT = 1
SYNTHETIC_CONFIG = "mc_lcr/synthetic.py"   # configs/<this>: the CPU twin (scripts/compare_detectors.py)

WEIGHTS_HELP = (
    "Give a local ImageNet Xception checkpoint with --config.model.backbone_pretrained=PATH: timm's "
    "legacy_xception (model.safetensors or pytorch_model.bin), the old timm file xception-43020ad28.pth, or "
    "Cadene's xception-b5690688.pth (the FF++ starting point). Weights cannot be downloaded at run time.")


# ----------------------------------------------------------------- config
def model_defaults() -> ml_collections.ConfigDict:
  """``config.model`` of MC-LCR: the paper's sizes (spec sections 2-3) and our readings' options."""
  m = ml_collections.ConfigDict()
  m.backbone = "xception"              # Xception preset: "xception" (the paper), "tiny" (twin), "test"
  m.backbone_overrides = ml_collections.ConfigDict()   # XceptionConfig fields over the preset
  m.backbone_pretrained = ""           # local ImageNet Xception weights (timm / Cadene), loaded by init
  m.require_pretrained = False         # True: refuse to start from a random backbone (the FF++ configs)
  m.gf_layer = "block12"               # GF = GAP(block12) in R^1024 [I]; "act4": GAP(act4) in R^2048
  m.ssrb = True                        # the three SSF in F_MM (False: Table 5 row 2)
  m.papda = True                       # the frequency branch, AF and PF (False: Table 5 row 3)
  m.gf = True                          # GF in F_MM (False with ssrb=False: the frequency branch alone)
  m.ssrb_norm = "hw"                   # Gram normalisation: "none", "hw" (default [I]), "chw"
  m.patch = 16                         # patch size P of the spectra
  m.token_dim = 0                      # PAPDA/Mixer token width D; 0: P^2
  m.heads = 4
  m.token_hidden = 256                 # Mixer token-mixing MLP width
  m.channel_hidden = 256               # Mixer channel-mixing MLP width
  m.mixer_depth = 2
  m.fe_dim = 1024                      # F_E
  m.z_dim = 128                        # contrastive embedding z
  m.dropout = 0.5                      # on F_MM and on F_E [I sites]
  m.tau = 0.1                          # SupCon temperature
  m.supcon = ml_collections.ConfigDict(dict(
      denominator="all",               # "all" (Khosla's L_out) or "negatives" (Eq. 13 as printed)
      reduction="mean",                # "mean" or "sum" (Eq. 13 as printed)
      scale=1.0))                      # SupContrast's temperature / base_temperature (1.43 at 0.1 / 0.07)
  m.dtype = "float32"                  # compute dtype; "bfloat16" for speed (parameters stay float32)
  m.pointwise = "auto"                 # 1x1 convs: "matmul" (2-5x faster on XLA:CPU), "xla", "auto" (matmul on CPU); same function
  m.cpu_kernels = "auto"               # XLA:CPU's conv/matmul kernels: "eigen", "ynnpack" (XLA's default), "auto" (eigen); xla_cpu.py
  m.depthwise = "auto"                 # backbone depthwise 3x3: "shifted" (fast on XLA:CPU), "xla" (same function; GPU/TPU kernels), "auto" (shifted on CPU)
  m.remat = "none"                     # "blocks": recompute each backbone block in the backward pass (same gradients, 1/3 the memory), "none", "auto" (blocks on CPU).
                                       # "none": at 256 px batch 16 the faster on CPU too (2.3-2.5 s vs 3.4 s plain, 9.1 s vs 10.5 s bi-level; docs/performance.md)
  return m


def defaults(c: ml_collections.ConfigDict) -> None:
  """MC-LCR's fields: ``config.model``, its input (256 px, balanced 8 + 8 batches, no augmentation)
  and the two-task weighting: the paper's fixed (0.5, 0.5) (alpha = 0.5); for the bi-level
  weighting lambda starts there and is kept >= 0."""
  c.model = model_defaults()
  c.data.image_size = 256
  c.data.balance_real = True             # SupCon needs both classes: every batch half real, half fake
  c.data.perturb_probability = 0.0       # no augmentation stated [P silent]
  c.data.hflip = False
  c.data.exclude_expansion = True        # no SJEDD expansion images (aug_*, xray) even where a world holds them
  c.batch_size = 16
  c.weighting.kind = "fixed"             # the paper; "bilevel": spec section 10 (ablations/bilevel.py)
  c.weighting.fixed = (0.5, 0.5)         # Eq. 15: (1 - alpha) L_CE + alpha L_SC, alpha = 0.5
  del c.weighting["lam_init"]            # the base's field is one float: re-typed as one value per task
  c.weighting.lam_init = (0.5, 0.5)
  c.weighting.nonneg = True              # a negative SupCon weight would reward anti-clustering


def model_config(config):
  """The ``MCLCRConfig`` of a run, or a ``ConfigError`` naming the field."""
  from sjedd_jax.detectors.mc_lcr import model as model_lib  # pylint: disable=g-import-not-at-top
  try:
    return model_lib.from_model_config(config.model, config.data.image_size)
  except (ValueError, TypeError, AttributeError, KeyError) as e:
    raise ConfigError(f"config.model (detector 'mc_lcr'): {e}") from None


def loss_options(config) -> dict[str, Any]:
  """``{tau, denominator, reduction, scale}`` of ``config.model``, checked."""
  m = config.model
  s = m.get("supcon") or {}
  opts = dict(tau=float(m.get("tau", 0.1)), denominator=s.get("denominator", "all"),
              reduction=s.get("reduction", "mean"), scale=float(s.get("scale", 1.0)))
  if not opts["tau"] > 0:
    raise ConfigError(f"config.model.tau={opts['tau']}: the SupCon temperature must be > 0")
  if opts["denominator"] not in losses_lib.DENOMINATORS:
    raise ConfigError(f"config.model.supcon.denominator={opts['denominator']!r}; expected one of "
                      f"{list(losses_lib.DENOMINATORS)}")
  if opts["reduction"] not in losses_lib.REDUCTIONS:
    raise ConfigError(f"config.model.supcon.reduction={opts['reduction']!r}; expected one of "
                      f"{list(losses_lib.REDUCTIONS)}")
  return opts


def check_weights(config) -> list[str]:
  """Problems for the trainer's preflight, as sentences: the backbone weights
  (``config.model.backbone_pretrained``: a missing file, or none when ``require_pretrained``)
  and a ``config.test_sets`` item without a directory (configs/mc_lcr/celebdf.py without its
  argument). Whether a named test set is prepared is ``preflight.check_data``'s check."""
  m = config.model
  problems = []
  path = m.get("backbone_pretrained", "")
  if path and not os.path.exists(os.path.expanduser(path)):
    problems.append(f"weights: config.model.backbone_pretrained={path!r} does not exist. {WEIGHTS_HELP}")
  if not path and m.get("require_pretrained", False):
    problems.append("weights: config.model.backbone_pretrained is empty and this config needs ImageNet Xception "
                    f"weights (the paper fine-tunes them). {WEIGHTS_HELP}")
  for item in str(config.get("test_sets") or "").split(","):
    name, eq, d = (s.strip() for s in item.partition("="))
    if (name or eq) and not d:
      problems.append(f"data: config.test_sets item {item.strip()!r} names no directory; give the prepared "
                      "test set, e.g. --config.test_sets=CDF=/data/cdf_crops (Celeb-DF: docs/mc_lcr.md)")
  return problems


def label_fn(rec) -> dict[str, np.ndarray]:
  """A manifest record's target: ``{"y": [is_fake]}`` (1 = fake)."""
  return {"y": np.asarray([float(rec.is_fake)], np.float32)}


def summarize(results: Mapping[str, Any]) -> dict[str, float]:
  """The detector's own metric of one test set for tables: the z cosine separation (within - across)."""
  emb = results.get("embedding") or {}
  gap = emb.get("cos_gap")
  return {"z cos within - across": float(gap)} if gap is not None and gap == gap else {}


# ----------------------------------------------------------------- the detector
def embedding_metrics(z, y) -> dict[str, float]:
  """``{"within_cos", "across_cos", "cos_gap"}`` of embeddings ``z`` (N, d) with labels ``y`` (N,)."""
  within, across = losses_lib.cosine_separation(np.asarray(z, np.float32), np.asarray(y, np.float32))
  within, across = float(within), float(across)
  return {"within_cos": within, "across_cos": across, "cos_gap": within - across}


BRANCHES = ("ssf", "gf", "af", "pf", "bias")
BRANCH_LABELS = {"ssf": "SSF (Gram, shallow)", "gf": "GF (Xception)", "af": "AF (amplitude)",
                 "pf": "PF (phase)", "bias": "bias"}


def describe_branches(outputs: Mapping[str, Any]) -> dict[str, Any]:
  """``predict``'s JSON fields of one file (outputs averaged over its faces): the logit and its exact
  split over the parts of F_MM (``MCLCRHead.branch_contributions``), and a sentence."""
  if "branch_logit" not in outputs:
    return {}
  parts = {n: float(v) for n, v in zip(BRANCHES, np.asarray(outputs["branch_logit"]).reshape(-1))}
  logit = float(np.asarray(outputs.get("logit", sum(parts.values()))))
  top = max((n for n in BRANCHES[:4]), key=lambda n: abs(parts[n]))
  return {"logit": logit, "branch_logit": parts,
          "branches": (f"logit {logit:+.2f} = " + " ".join(f"{parts[n]:+.2f} ({n})" for n in BRANCHES)
                       + f"; the largest part: {BRANCH_LABELS[top]} (each part measured from a zero feature)")}


def branch_gap(branch_logit, y) -> dict[str, float]:
  """Per part of F_MM: its mean logit contribution on the fake faces minus that on the real ones (the
  zero-feature reference cancels; the parts' gaps sum to the gap of the mean logits). NaN without
  both classes."""
  b = np.asarray(branch_logit, np.float64)
  y = np.asarray(y).reshape(-1) > 0.5
  if not y.any() or y.all():
    return {n: float("nan") for n in BRANCHES[:4]}
  gap = b[y].mean(0) - b[~y].mean(0)
  return {n: float(g) for n, g in zip(BRANCHES[:4], gap[:4])}


def plot_branches(outputs, path: str, *, title: str, image=None, threshold: float = 0.5):
  """A bar chart of the logit's exact split over SSF, GF, AF, PF and the bias (``predict --plots``)."""
  del image
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  d = describe_branches(outputs)
  if not d:
    raise ValueError("outputs lack 'branch_logit' (an MC-LCR predict output)")
  vals = [d["branch_logit"][n] for n in BRANCHES]
  fig, ax = plt.subplots(figsize=(6, 3))
  ax.barh([BRANCH_LABELS[n] for n in BRANCHES][::-1], vals[::-1],
          color=["#c44" if v > 0 else "#48c" for v in vals[::-1]])
  ax.axvline(0, color="k", lw=0.8)
  t = float(np.log(threshold / (1 - threshold))) if 0 < threshold < 1 else 0.0
  ax.set_xlabel(f"contribution to the logit (sum {d['logit']:+.2f}; fake above {t:+.2f}); from a zero feature")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def detector_from(cfg, loss_opts: Mapping[str, Any], init: Callable[[int], interface.Variables],
                  handle: interface.ModuleHandle, config=None) -> interface.Detector:
  """The ``Detector`` of an MC-LCR model ``cfg`` (``model.MCLCRConfig``) built by ``init``."""
  opts = dict(loss_opts)

  def merge(params, state):
    if handle.graphdef is None:  # variables from elsewhere (a checkpoint) before init: the structure suffices
      from flax import nnx  # pylint: disable=g-import-not-at-top
      from sjedd_jax.detectors.mc_lcr import model as model_lib  # pylint: disable=g-import-not-at-top
      handle.graphdef = nnx.graphdef(nnx.eval_shape(lambda: model_lib.MCLCR(cfg, rngs=nnx.Rngs(0))))
    return handle.merge(params, state)

  def forward(params, state, images, train, rng):
    model = merge(params, state)
    return model, model(images, train=train, rng=rng)

  def task_losses(params, state, batch, rng, train):
    model, out = forward(params, state, batch["image"], train, rng)
    y = batch["y"][:, 0]
    losses = losses_lib.task_losses(out, y, **opts)
    acc = jnp.mean(((out["logit"] > 0) == (y > 0.5)).astype(jnp.float32))
    within, across = losses_lib.cosine_separation(jax.lax.stop_gradient(out["z"]), y)
    return losses, handle.state_of(model), {"accuracy": acc, "z_cos_gap": within - across}

  def predict(params, state, images):
    model, out = forward(params, state, images, False, None)
    return {"p_fake": jax.nn.sigmoid(out["logit"]), "z": out["z"], "logit": out["logit"],
            "branch_logit": model.head.branch_contributions(out["f_mm"])}

  def eval_metrics(outputs, labels):
    if "z" not in outputs or "y" not in labels:
      return {}
    y = np.asarray(labels["y"]).reshape(-1)
    out = {"embedding": embedding_metrics(outputs["z"], y)}
    if "branch_logit" in outputs:
      out["branch_gap"] = branch_gap(outputs["branch_logit"], y)
    return out

  def describe(outputs, **kwargs):
    del kwargs
    return describe_branches(outputs)

  def export_fn(variables, out_dir, run_config=None):
    return export(merge(jax.device_get(variables.params), jax.device_get(variables.state)), out_dir,
                  loss_opts=opts, config=run_config if run_config is not None else config)

  def param_labels(params):
    return interface.tree_labels(params, [("backbone", "backbone")], "head")

  return interface.Detector(
      name=NAME, task_names=TASK_NAMES, batch_keys=("image",) + LABEL_KEYS, label_fn=label_fn, init=init,
      task_losses=task_losses, predict=predict, image_size=int(cfg.image_size), mean=tuple(cfg.mean),
      std=tuple(cfg.std), primary=(1.0, 0.0), eval_metrics=eval_metrics, describe=describe, export=export_fn,
      param_labels=param_labels, bind=merge, plot=plot_branches,
      compiler_options=xla_cpu.from_model_config(None if config is None else config.model))


def build_module(config, cfg=None, seed: int = 0):
  """The MC-LCR module of a run: random init, then the backbone's ImageNet weights when given."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.mc_lcr import model as model_lib  # pylint: disable=g-import-not-at-top
  cfg = cfg or model_config(config)
  module = model_lib.MCLCR(cfg, rngs=nnx.Rngs(seed))
  path = config.model.get("backbone_pretrained", "")
  if path and module.backbone is not None:
    path = os.path.expanduser(path)
    if not os.path.exists(path):
      raise ConfigError(f"config.model.backbone_pretrained={config.model.backbone_pretrained!r} does not exist. "
                        f"{WEIGHTS_HELP}")
    xception_backbone.load_pretrained(path, module.backbone)
  return module


def make(config) -> interface.Detector:
  """The MC-LCR detector of ``config`` (``config.model``, ``config.data.image_size``)."""
  cfg = model_config(config)
  opts = loss_options(config)
  if cfg.image_size != config.data.image_size:
    raise ConfigError(f"config.data.image_size={config.data.image_size} differs from the model's {cfg.image_size}")
  handle = interface.ModuleHandle(NAME)
  return detector_from(cfg, opts, lambda seed: handle.split(build_module(config, cfg, seed)), handle, config)


# ----------------------------------------------------------------- export
def _to_dict(config):
  if config is None:
    return None
  return config.to_dict() if hasattr(config, "to_dict") else dict(config)


def export(module, out_dir: str, *, loss_opts: Mapping[str, Any] | None = None, config=None) -> str:
  """Writes an inference export: ``model.safetensors`` (every variable of the NNX module by path,
  BatchNorm statistics included), ``mc_lcr.json`` (``MCLCRConfig``, loss options, the run's
  config) and ``detector.json``; atomically (``out_dir.tmp`` renamed)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  from sjedd_jax import detectors  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.mc_lcr import model as model_lib  # pylint: disable=g-import-not-at-top

  def write(tmp):
    os.makedirs(tmp)
    flat = {k: np.ascontiguousarray(v) for k, v in model_lib.flatten(module).items()}
    save_file(flat, os.path.join(tmp, MODEL_FILE),
              metadata={"format": "sjedd_jax mc_lcr", "version": str(EXPORT_FORMAT)})

  meta = {"format": EXPORT_FORMAT, "model": module.config.to_dict(), "loss": dict(loss_opts or {}),
          "task_names": list(TASK_NAMES), "params": model_lib.count_params(module), "config": _to_dict(config)}
  return detectors.write_export(out_dir, NAME, write, EXPORT_MARKER, meta,
                                model_file=MODEL_FILE, image_size=module.config.image_size)


def load_module(path: str, dtype: str | None = None):
  """``(module, loss options)`` of an export written by ``export`` (no config needed)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.mc_lcr import model as model_lib  # pylint: disable=g-import-not-at-top
  path = os.path.expanduser(os.fspath(path))
  meta_path = os.path.join(path, EXPORT_MARKER)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{path}: no {EXPORT_MARKER}; not an MC-LCR model exported by sjedd_jax.train")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    cfg = model_lib.MCLCRConfig.from_dict(meta["model"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise FileNotFoundError(f"{meta_path}: not a valid MC-LCR export description ({type(e).__name__}: {e})") from None
  if dtype:
    cfg = cfg.replace(dtype=dtype)
  weights = os.path.join(path, MODEL_FILE)
  if not os.path.exists(weights):
    raise FileNotFoundError(f"{path}: {MODEL_FILE} is missing (the export is incomplete)")
  module = nnx.eval_shape(lambda: model_lib.MCLCR(cfg, rngs=nnx.Rngs(0)))
  model_lib.assign(module, load_file(weights), where=weights)
  return module, dict(meta.get("loss") or {})


def load_export(path: str, dtype: str | None = None) -> tuple[interface.Detector, interface.Variables]:
  """The detector and variables of an MC-LCR export directory."""
  module, opts = load_module(path, dtype=dtype)
  handle = interface.ModuleHandle(NAME)
  variables = handle.split(module)
  return detector_from(module.config, opts, lambda seed: variables, handle), variables
