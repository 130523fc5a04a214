"""The MC-LCR model: Xception backbone + ``MCLCRHead`` (spec mc_lcr.md section 2), and its config.

``MCLCR(cfg)(x, train=..., rng=...)`` takes NHWC images normalised with the
backbone's mean/std ((x - 0.5) / 0.5, the data pipeline's ``Detector.mean/std``)
and returns the head's dict (``logit``, ``z``, ``f_e``, ``f_mm``, ``ssf``, ``af``,
``pf``). The patch spectra need the [0, 1] image: the model undoes the
normalisation (``x * std + mean``) before the frequency branch.

``MCLCRConfig`` holds everything that fixes the module's shapes and computation (the
resolved ``XceptionConfig`` included), so an export rebuilds the model from its JSON
alone. ``from_model_config(config.model, image_size)`` reads a run's ``config.model``.

Default sizes (256 px): backbone to block12 16,058,152 parameters, frequency branch
1,716,736, heads 2,164,865; total 19,939,753 (spec 2.6).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sjedd_jax.backbones import layers, xception
from sjedd_jax.detectors.mc_lcr import modules

DTYPES = ("float32", "bfloat16")
GF_LAYERS = ("block12", "act4")
DEPTHWISE = xception.DEPTHWISE


@dataclasses.dataclass(frozen=True)
class MCLCRConfig:
  """Shapes and switches of an MC-LCR model.

  Attributes:
    backbone: the Xception (``XceptionConfig``; ``upto``/``gf_layer`` set from ``gf_layer``).
    image_size: input side (square); a multiple of ``patch``.
    patch: patch size P of the spectra (16; 8 in the synthetic twin).
    token_dim: PAPDA/Mixer token width D; 0 means P^2.
    heads, token_hidden, channel_hidden, mixer_depth: PAPDA heads and Mixer sizes.
    fe_dim, z_dim: widths of F_E and of the embedding z.
    dropout: rate of the two dropout sites (F_MM and F_E).
    ssrb, papda, gf: the parts of F_MM (Table 5 switches; ``gf=False`` with ``ssrb=False``
      is the frequency branch alone and builds no backbone).
    ssrb_norm: Gram normalisation "none" / "hw" / "chw".
    dtype: compute dtype, "float32" or "bfloat16" (parameters stay float32).
    pointwise: how the 1x1 convs run: "matmul" (``layers.conv_1x1_as_matmul``, 2-5x faster on
      XLA:CPU), "xla" (``lax.conv_general_dilated``) or "auto" (matmul on CPU, xla elsewhere);
      the same function and parameters.
    depthwise: how the backbone's 3x3 stride-1 depthwise convs run: "shifted" (nine shifted
      multiply-adds, ``xception.use_shifted_depthwise``: XLA:CPU runs grouped convs far slower),
      "xla" (``nnx.Conv`` with ``feature_group_count=C``) or "auto" (the default: shifted on CPU,
      xla elsewhere, which have depthwise kernels of their own: ``xception.depthwise_impl``). The same function,
      parameters and variable paths: an export of one loads into the other.
    remat: "blocks": each backbone block keeps only its input for the backward pass and is
      recomputed there (``xception.set_remat``; the same function and gradients in a third of the
      step's XLA temporaries at 256 px; on XLA:CPU a faster plain step at the twin's size, and
      slower steps at 256 px once malloc keeps freed memory, docs/performance.md); "none"; "auto"
      (this dataclass's default): blocks on CPU, none elsewhere. The detector's config
      (``model_defaults``) says "none", the twin's config "auto".
    mean, std: the input normalisation the model undoes for the spectra.
  """

  backbone: xception.XceptionConfig = dataclasses.field(default_factory=xception.XceptionConfig)
  image_size: int = 256
  patch: int = 16
  token_dim: int = 0
  heads: int = 4
  token_hidden: int = 256
  channel_hidden: int = 256
  mixer_depth: int = 2
  fe_dim: int = 1024
  z_dim: int = 128
  dropout: float = 0.5
  ssrb: bool = True
  papda: bool = True
  gf: bool = True
  ssrb_norm: str = "hw"
  dtype: str = "float32"
  depthwise: str = "auto"
  pointwise: str = "auto"
  remat: str = "auto"
  mean: tuple[float, float, float] = xception.MEAN
  std: tuple[float, float, float] = xception.STD

  def __post_init__(self):
    if isinstance(self.backbone, Mapping):
      object.__setattr__(self, "backbone", xception.XceptionConfig.from_dict(self.backbone))
    object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
    object.__setattr__(self, "std", tuple(float(v) for v in self.std))
    if self.dtype not in DTYPES:
      raise ValueError(f"MCLCRConfig: dtype {self.dtype!r} not one of {list(DTYPES)}")
    if self.image_size <= 0 or self.patch <= 0 or self.image_size % self.patch:
      raise ValueError(f"MCLCRConfig: image_size {self.image_size} is not a multiple of the patch size {self.patch}")
    if self.pointwise not in layers.POINTWISE:
      raise ValueError(f"MCLCRConfig: pointwise {self.pointwise!r} not one of {list(layers.POINTWISE)}")
    if self.depthwise not in DEPTHWISE:
      raise ValueError(f"MCLCRConfig: depthwise {self.depthwise!r} not one of {list(DEPTHWISE)}")
    if self.remat not in xception.REMAT:
      raise ValueError(f"MCLCRConfig: remat {self.remat!r} not one of {list(xception.REMAT)}")
    if self.ssrb_norm not in modules.SSRB_NORMS:
      raise ValueError(f"MCLCRConfig: ssrb_norm {self.ssrb_norm!r} not one of {list(modules.SSRB_NORMS)}")
    if not (self.ssrb or self.papda or self.gf):
      raise ValueError("MCLCRConfig: ssrb, papda and gf are all off: the fused feature F_MM would be empty")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"MCLCRConfig: dropout must be in [0, 1), got {self.dropout}")
    d = self.token_dim or self.patch * self.patch
    if self.papda and d % self.heads:
      raise ValueError(f"MCLCRConfig: token width {d} is not divisible by heads {self.heads}")
    if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
      raise ValueError(f"MCLCRConfig: mean {self.mean} / std {self.std} need 3 values (std > 0)")

  @property
  def uses_backbone(self) -> bool:
    return self.ssrb or self.gf

  def head_kwargs(self) -> dict[str, Any]:
    taps = self.backbone.tap_channels
    return dict(image_size=self.image_size, patch=self.patch, token_dim=self.token_dim or None, heads=self.heads,
                token_hidden=self.token_hidden, channel_hidden=self.channel_hidden, mixer_depth=self.mixer_depth,
                tap_channels=tuple(taps[n] for n in modules.TAP_NAMES), gf_dim=taps["gf"], fe_dim=self.fe_dim,
                z_dim=self.z_dim, dropout_rate=self.dropout, ssrb=self.ssrb, papda=self.papda, gf=self.gf,
                ssrb_norm=self.ssrb_norm, dtype=None if self.dtype == "float32" else self.dtype)

  def replace(self, **kw) -> "MCLCRConfig":
    if "dtype" in kw:  # one compute dtype for backbone and head
      kw.setdefault("backbone", self.backbone.replace(dtype=kw["dtype"]))
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["backbone"] = self.backbone.to_dict()
    d["mean"], d["std"] = list(self.mean), list(self.std)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "MCLCRConfig":
    d = dict(d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"MCLCRConfig: unknown field(s) {unknown}; known fields are {sorted(names)}")
    if isinstance(d.get("backbone"), Mapping):
      d["backbone"] = xception.XceptionConfig.from_dict(d["backbone"])
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def from_model_config(m, image_size: int) -> MCLCRConfig:
  """``MCLCRConfig`` from a run's ``config.model`` (``defaults``' fields) and ``config.data.image_size``.

  Raises ``ValueError`` naming the field for an invalid value.
  """
  gf_layer = m.get("gf_layer", "block12")
  if gf_layer not in GF_LAYERS:
    raise ValueError(f"config.model.gf_layer={gf_layer!r}; expected one of {list(GF_LAYERS)} "
                     "('block12': GAP of block12, R^1024, the default; 'act4': GAP of act4, R^2048)")
  dtype = m.get("dtype", "float32")
  overrides = dict(m.get("backbone_overrides") or {})
  for k in ("stem_widths", "entry_widths", "head_widths"):
    if k in overrides:
      overrides[k] = tuple(overrides[k])
  try:
    bb = xception.get_config(m.get("backbone", "xception"), **overrides).replace(
        upto="act4" if gf_layer == "act4" else "block12", gf_layer=gf_layer, dtype=dtype)
  except (ValueError, TypeError) as e:
    raise ValueError(f"config.model.backbone / backbone_overrides: {e}") from None
  return MCLCRConfig(backbone=bb, image_size=int(image_size), patch=int(m.patch),
                     token_dim=int(m.get("token_dim", 0) or 0), heads=int(m.heads), token_hidden=int(m.token_hidden), channel_hidden=int(m.channel_hidden),
                     mixer_depth=int(m.mixer_depth), fe_dim=int(m.fe_dim), z_dim=int(m.z_dim),
                     dropout=float(m.dropout), ssrb=bool(m.ssrb), papda=bool(m.papda), gf=bool(m.get("gf", True)),
                     ssrb_norm=m.ssrb_norm, dtype=dtype, depthwise=m.get("depthwise", "auto"),
                     pointwise=m.get("pointwise", "auto"), remat=m.get("remat", "auto"))


class MCLCR(nnx.Module):
  """Xception (to block12, or act4) + SSRB + patch-spectra PAPDA/Mixers + fusion heads.

  Args:
    config: an ``MCLCRConfig``.
    rngs: initialisation keys (backbone first, then the head).
  Call: ``model(x, train=..., rng=...)`` with ``x`` (B, S, S, 3) normalised images;
  ``rng`` is the dropout key (needed when training with dropout > 0).
  """

  def __init__(self, config: MCLCRConfig | None = None, *, rngs: nnx.Rngs):
    cfg = config or MCLCRConfig()
    self.config = cfg
    self.backbone = xception.Xception(cfg.backbone, rngs=rngs) if cfg.uses_backbone else None
    if self.backbone is not None:
      if xception.depthwise_impl(cfg.depthwise) == "shifted":
        xception.use_shifted_depthwise(self.backbone)
      xception.set_remat(self.backbone, cfg.remat)
    self.head = modules.MCLCRHead(**cfg.head_kwargs(), rngs=rngs)
    layers.set_pointwise(self, cfg.pointwise)  # 1x1 convs as matmuls on CPU: the same function

  def unnormalise(self, x: jax.Array) -> jax.Array:
    """Normalised model input -> the [0, 1] image (float32)."""
    mean = jnp.asarray(self.config.mean, jnp.float32)
    std = jnp.asarray(self.config.std, jnp.float32)
    return x.astype(jnp.float32) * std + mean

  def __call__(self, x: jax.Array, *, train: bool, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    s = self.config.image_size
    if x.ndim != 4 or tuple(x.shape[1:]) != (s, s, 3):
      raise ValueError(f"MC-LCR expects (B, {s}, {s}, 3) normalised NHWC images, got shape {tuple(x.shape)}")
    taps = self.backbone(x, train) if self.backbone is not None else {}
    image01 = self.unnormalise(x) if self.config.papda else None
    return self.head(taps, image01, train=train, rng=rng)


def count_params(module: nnx.Module) -> int:
  """Trainable parameters (``nnx.Param``; BatchNorm running statistics are not counted)."""
  return int(sum(np.prod(v.shape) for v in jax.tree.leaves(nnx.state(module, nnx.Param))))


# ------------------------------------------------------------------ flat state (export)
def _path_str(path) -> str:
  return ".".join(str(p) for p in path)


def flat_variables(module: nnx.Module) -> dict[str, Any]:
  """{"backbone.block1.rep.0.conv1.kernel": Variable, ...}: every variable of the module."""
  return {_path_str(path): var for path, var in nnx.to_flat_state(nnx.state(module))}


def flatten(module: nnx.Module) -> dict[str, np.ndarray]:
  """The module's parameters and BatchNorm statistics as {path: numpy array}."""
  return {k: np.asarray(var.get_value()) for k, var in flat_variables(module).items()}


def assign(module: nnx.Module, flat: Mapping[str, Any], where: str = "export") -> nnx.Module:
  """Writes {path: array} into ``module`` in place; every missing, unexpected and mis-shaped key
  is named in one ``ValueError`` first."""
  variables = flat_variables(module)
  shapes = {k: tuple(v.shape) for k, v in variables.items()}
  missing = sorted(set(shapes) - set(flat))
  unexpected = sorted(set(flat) - set(shapes))
  bad = sorted(f"{k}: file {tuple(np.shape(flat[k]))} vs model {shapes[k]}"
               for k in set(flat) & set(shapes) if tuple(np.shape(flat[k])) != shapes[k])
  if missing or unexpected or bad:
    raise ValueError(f"{where} does not match the MC-LCR model:"
                     + (f"\n  missing ({len(missing)}): {missing[:20]}" if missing else "")
                     + (f"\n  unexpected ({len(unexpected)}): {unexpected[:20]}" if unexpected else "")
                     + (f"\n  shape mismatch ({len(bad)}): {bad[:20]}" if bad else ""))
  for k, var in variables.items():
    var.set_value(jnp.asarray(flat[k]))
  return module
