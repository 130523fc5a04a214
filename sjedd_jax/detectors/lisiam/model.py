"""LiSiam_A in Flax NNX (spec lisiam.md section 2): Xception -> OCR -> segmentation -> SCU -> MT -> MLP.

One branch (weights shared by the two Siamese branches)::

    x ──Xception (to block12; block3/block12 stride 1)──> x_mid (block4), x_out (block12)
    x_mid ──aux head──> A (2 soft-region logits)
    x_out ──bottleneck──> X0 ──spatial gather (softmax of A over positions)──> r (2 region vectors)
    X0, r ──object context (256^-1/2 scaled attention)──> X_I ──seg decoder──> X_s (2 logits)
    X_I ──SCU──> X_c;  softmax(X_s) resized to X_c ──> G'
    X_c * G'[0] = X_r, X_c * G'[1] = X_f ──MT (no 1/sqrt(d))──> BN(Y) ──SE(concat[X_c, BN(Y)])──> Z
    GAP(Z) ──Linear, BN1d, ReLU, Linear──> alpha (2 logits)

Shapes at 299 px with the full widths: x_mid 37x37x728, x_out 37x37x1024, X_I 37x37x512,
X_s 37x37x2, X_c 13x13x512, Z 13x13x1024. Channel 0 of every 2-class output is "real",
channel 1 "fake".

Choices, each a constructor switch (``LiSiamConfig``):

* ``scu``: "release" (conv 3x3 s2 p1 + conv 1x1 **p1**, twice, biases; 37 -> 19 -> 21 ->
  11 -> 13) or "depthwise" (the paper's "separable convolutions": the 3x3 convs depthwise,
  padded 1x1 kept, so the shapes are the release's);
* ``head``: "mt" (LiSiam) or "seg_logits" (Table VI model F: alpha = GAP of two conv 3x3 s2
  p1 2->2 over X_s; no SCU/MT/MLP);
* ``channel_order``: "rgb" (default) or "bgr" (the release feeds OpenCV's BGR; only for its
  checkpoints): the model flips the channels of its RGB input;
* ``depthwise``: "shifted" runs the backbone's depthwise 3x3 convs as nine shifted
  multiply-adds (``ShiftedDepthwise``: same parameters, paths and outputs; XLA:CPU's grouped
  convolution is ~50x slower at these sizes), "xla" the backbone's own ``nnx.Conv`` (GPU/TPU
  depthwise kernels), "auto" (default) shifted on CPU and xla elsewhere;
* BatchNorm is ``layers.BatchNorm`` (torch's momentum 0.1, eps 1e-5, unbiased running
  variance); Dropout2d is ``layers.channel_dropout``; the MT's attention dropout is
  element-wise. The release's aux and segmentation heads have Dropout2d(0), i.e. none.

Resizing is bilinear with half-pixel centres (``align_corners=False``) and **no
antialiasing** (``resize_bilinear``), as torch's ``F.interpolate``; ``jax.image.resize``
would antialias when shrinking.

The release's checkpoint keys (``LiSiam_A``: ``backbone_net.*``, ``auxiliary_decoder.*``,
``bottleneck.*``, ``object_context_block.*``, ``segDecoder.1``, ``clsE.*``, ``Qf``, ``Kf``,
``Vf``, ``W_z.*``, ``BN``, ``se.fc.*``, ``getScore.*``; model F ``clsDR.*``) map onto the
NNX paths by ``RELEASE_MODULES``: ``load_release_state_dict`` / ``to_release_state_dict``.

Example::

    cfg = LiSiamConfig()                                    # the release's widths, 299 px
    model = LiSiam(cfg, rngs=nnx.Rngs(0))
    out = model(jnp.zeros((2, 299, 299, 3)), train=False)  # out["seg"] (2, 37, 37, 2), out["logits"] (2, 2)
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sjedd_jax.backbones import layers
from sjedd_jax.backbones import xception as xception_lib
from sjedd_jax.backbones.layers import (BatchNorm, channel_dropout, dropout, torch_default_bias_init,
                                        torch_default_kernel_init)
from sjedd_jax.backbones.xception import params as xparams
from sjedd_jax.weights import CheckpointError, check_values, read_state_dict, strip_prefixes, to_numpy

__all__ = ["CheckpointError", "LiSiam", "LiSiamConfig", "RELEASE_MODULES", "SEG_MODULES", "build",
           "flatten", "assign", "get_config", "load_release_state_dict", "resize_bilinear",
           "to_release_state_dict"]

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
SCU_KINDS = ("release", "depthwise")
HEADS = ("mt", "seg_logits")
CHANNEL_ORDERS = ("rgb", "bgr")
DEPTHWISE = xception_lib.DEPTHWISE
RELEASE_STRIDES = {"block3": 1, "block12": 1}


# ----------------------------------------------------------------- config
@dataclasses.dataclass(frozen=True)
class LiSiamConfig:
  """Widths and switches of a LiSiam model. Defaults: the release's ``LiSiam_A`` at 299 px.

  Attributes:
    backbone: the Xception (``XceptionConfig``; default the full model with block3 and
      block12 at stride 1, up to block12).
    ocr_channels: OCR width (X0, X_I, the SCU and the MT): 512.
    transform_channels: object-context key/query/value width: 256 (attention scaled by its
      -1/2 power).
    num_classes: 2 (real, fake).
    scu: "release" or "depthwise" (module docstring).
    scu_dropout: Dropout2d rate after each SCU BatchNorm (0.1).
    attn_dropout: dropout on the MT's attention matrix (0.1).
    se_reduction: the SE block's reduction (16: 1024 -> 64 -> 1024).
    head_width: hidden width of the MLP head (1024).
    head: "mt" (LiSiam) or "seg_logits" (model F).
    channel_order: "rgb" or "bgr" (the input is flipped to BGR inside the model).
    pointwise: how the 1x1 convs run: "matmul" (``layers.conv_1x1_as_matmul``, 2-5x faster on
      XLA:CPU), "xla" (``lax.conv_general_dilated``) or "auto" (matmul on CPU, xla elsewhere);
      the same function and parameters.
    depthwise: how the backbone's 3x3 depthwise convs run: "shifted" (nine shifted
      multiply-adds, ``ShiftedDepthwise``; the same function and parameters) or "xla" (the
      backbone's grouped ``nnx.Conv``, very slow on XLA:CPU) or "auto" (the default: shifted on
      CPU, xla elsewhere: ``xception.depthwise_impl``).
    remat: "blocks": each backbone block keeps only its input for the backward pass and is
      recomputed there (``xception.set_remat``; the same function and gradients, a fifth of the
      step's XLA temporaries at 299 px, and a faster step on XLA:CPU); "none"; "auto" (the
      default): blocks on CPU, none elsewhere.
    bn_momentum, bn_eps: torch's BatchNorm defaults.
    dtype: compute dtype ("float32", "bfloat16"); parameters and statistics stay float32.
  """

  backbone: xception_lib.XceptionConfig = dataclasses.field(
      default_factory=lambda: xception_lib.get_config("xception", block_strides=RELEASE_STRIDES))
  ocr_channels: int = 512
  transform_channels: int = 256
  num_classes: int = 2
  scu: str = "release"
  scu_dropout: float = 0.1
  attn_dropout: float = 0.1
  se_reduction: int = 16
  head_width: int = 1024
  head: str = "mt"
  channel_order: str = "rgb"
  depthwise: str = "auto"
  pointwise: str = "auto"
  remat: str = "auto"
  bn_momentum: float = 0.1
  bn_eps: float = 1e-5
  dtype: str = "float32"

  def __post_init__(self):
    if isinstance(self.backbone, Mapping):
      object.__setattr__(self, "backbone", xception_lib.XceptionConfig.from_dict(self.backbone))
    if not isinstance(self.backbone, xception_lib.XceptionConfig):
      raise ValueError(f"LiSiamConfig: backbone must be an XceptionConfig, got {type(self.backbone).__name__}")
    if self.backbone.upto != "block12":
      raise ValueError(f"LiSiamConfig: the backbone must stop at block12 (upto='block12'), got {self.backbone.upto!r}")
    checks = (("scu", SCU_KINDS), ("head", HEADS), ("channel_order", CHANNEL_ORDERS), ("dtype", tuple(_DTYPES)),
              ("depthwise", DEPTHWISE), ("pointwise", layers.POINTWISE), ("remat", xception_lib.REMAT))
    for name, allowed in checks:
      if getattr(self, name) not in allowed:
        raise ValueError(f"LiSiamConfig: {name}={getattr(self, name)!r}; expected one of {list(allowed)}")
    for name in ("ocr_channels", "transform_channels", "head_width", "se_reduction"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"LiSiamConfig: {name} must be >= 1, got {getattr(self, name)}")
    if self.num_classes != 2:
      raise ValueError(f"LiSiamConfig: num_classes must be 2 (real, fake), got {self.num_classes}")
    if (2 * self.ocr_channels) // self.se_reduction < 1:
      raise ValueError(f"LiSiamConfig: se_reduction {self.se_reduction} leaves no SE hidden unit for "
                       f"{2 * self.ocr_channels} channels")
    for name in ("scu_dropout", "attn_dropout"):
      if not 0.0 <= float(getattr(self, name)) < 1.0:
        raise ValueError(f"LiSiamConfig: {name} must be in [0, 1), got {getattr(self, name)}")

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **kw) -> "LiSiamConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    d["backbone"] = self.backbone.to_dict()
    d["backbone"]["block_strides"] = list(self.backbone.block_strides)
    return d

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "LiSiamConfig":
    d = dict(d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"LiSiamConfig: unknown field(s) {unknown}; known fields are {sorted(names)}")
    if "backbone" in d and isinstance(d["backbone"], Mapping):
      d["backbone"] = xception_lib.XceptionConfig.from_dict(d["backbone"])
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def get_config(name: str = "lisiam", **overrides) -> LiSiamConfig:
  """Presets: "lisiam" (the release, 299 px), "lisiam-tiny" (the synthetic twin, 64 px; spec
  section 9: OCR 64 / transform 32, SCU and MT 64, SE 128/8, head 128), "test" (unit tests).

  ``overrides`` are ``LiSiamConfig`` fields; ``backbone`` may be a preset name of
  ``xception.get_config`` or an ``XceptionConfig``.
  """
  if name in ("lisiam", "release"):
    base = LiSiamConfig()
  elif name in ("lisiam-tiny", "tiny"):
    base = LiSiamConfig(backbone=xception_lib.get_config("lisiam-tiny"), ocr_channels=64, transform_channels=32,
                        se_reduction=8, head_width=128)
  elif name == "test":
    base = LiSiamConfig(backbone=xception_lib.get_config("lisiam-tiny", stem_widths=(8, 16), entry_widths=(16, 24),
                                                         exit_width=32, block_strides=(2, 1, 1, 1, 1)),
                        ocr_channels=16, transform_channels=8, se_reduction=4, head_width=16)
  else:
    raise ValueError(f"unknown LiSiam preset {name!r}; presets are 'lisiam', 'lisiam-tiny', 'test'")
  backbone = overrides.pop("backbone", None)
  if isinstance(backbone, str):
    overrides["backbone"] = xception_lib.get_config(backbone)
  elif backbone is not None:
    overrides["backbone"] = backbone
  return base.replace(**overrides)


# ----------------------------------------------------------------- layers
def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """NHWC bilinear resize with half-pixel centres and no antialiasing (torch's
  ``F.interpolate(mode="bilinear", align_corners=False)``, up or down)."""
  b, h, w, c = x.shape
  oh, ow = int(size[0]), int(size[1])
  if (h, w) == (oh, ow):
    return x
  scale = jnp.asarray([oh / h, ow / w], jnp.float32)
  return jax.image.scale_and_translate(x, (b, oh, ow, c), (1, 2), scale, jnp.zeros(2, jnp.float32),
                                       method="linear", antialias=False)


def _conv(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, groups: int = 1,
          bias: bool = False, dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """A torch-style conv: explicit symmetric padding, torch's default init."""
  fan_in = cin // groups * kernel * kernel
  return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((padding, padding), (padding, padding)),
                  feature_group_count=groups, use_bias=bias, kernel_init=torch_default_kernel_init,
                  bias_init=torch_default_bias_init(fan_in), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


def _linear(cin: int, cout: int, *, bias: bool = True, dtype, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(cin, cout, use_bias=bias, kernel_init=torch_default_kernel_init,
                    bias_init=torch_default_bias_init(cin), dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class ConvBN(nnx.Module):
  """Conv (no bias) -> BatchNorm -> optional ReLU (sssegmentation's conv + norm + act)."""

  def __init__(self, cin: int, cout: int, kernel: int, *, padding: int = 0, relu: bool = True,
               cfg: LiSiamConfig, rngs: nnx.Rngs):
    self.conv = _conv(cin, cout, kernel, padding=padding, dtype=cfg.compute_dtype, rngs=rngs)
    self.bn = BatchNorm(cout, momentum=cfg.bn_momentum, eps=cfg.bn_eps, dtype=cfg.compute_dtype)
    self.relu = relu

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.bn(self.conv(x), train)
    return jax.nn.relu(y) if self.relu else y


# ----------------------------------------------------------------- the model
# The segmentation modules (phase 1 trains them, phase 2 freezes them): backbone, OCR incl.
# the aux head, segmentation decoder. Everything else is the classification part (SCU, MT, SE,
# MLP head; model F's two convs).
SEG_MODULES = ("backbone", "aux_conv", "aux_cls", "bottleneck", "query_project", "key_project",
               "value_project", "out_project", "context_bottleneck", "seg_cls")


class LiSiam(nnx.Module):
  """LiSiam_A (or model F with ``head="seg_logits"``); see the module docstring.

  ``model(x, train, rng)`` runs one full branch; ``model.segment`` runs steps 1-3 (the
  second Siamese branch) and ``model.classify`` the rest.
  """

  def __init__(self, config: LiSiamConfig | None = None, *, rngs: nnx.Rngs):
    cfg = config or LiSiamConfig()
    self.config = cfg
    dt = cfg.compute_dtype
    bb = cfg.backbone
    o, t = cfg.ocr_channels, cfg.transform_channels
    kw = dict(cfg=cfg, rngs=rngs)
    self.backbone = xception_lib.Xception(bb, rngs=rngs)
    if xception_lib.depthwise_impl(cfg.depthwise) == "shifted":
      xception_lib.use_shifted_depthwise(self.backbone)
    xception_lib.set_remat(self.backbone, cfg.remat)
    self.aux_conv = ConvBN(bb.tap_channels["block4"], o, 3, padding=1, **kw)
    self.aux_cls = _conv(o, cfg.num_classes, 1, bias=True, dtype=dt, rngs=rngs)
    self.bottleneck = ConvBN(bb.exit_width, o, 3, padding=1, **kw)
    self.query_project = nnx.List([ConvBN(o, t, 1, **kw), ConvBN(t, t, 1, **kw)])
    self.key_project = nnx.List([ConvBN(o, t, 1, **kw), ConvBN(t, t, 1, **kw)])
    self.value_project = ConvBN(o, t, 1, **kw)
    self.out_project = ConvBN(t, o, 1, **kw)
    self.context_bottleneck = ConvBN(2 * o, o, 3, padding=1, **kw)
    self.seg_cls = _conv(o, cfg.num_classes, 1, bias=True, dtype=dt, rngs=rngs)
    bn = dict(momentum=cfg.bn_momentum, eps=cfg.bn_eps, dtype=dt)
    if cfg.head == "seg_logits":
      n = cfg.num_classes
      self.dr_conv1 = _conv(n, n, 3, stride=2, padding=1, bias=True, dtype=dt, rngs=rngs)
      self.dr_conv2 = _conv(n, n, 3, stride=2, padding=1, bias=True, dtype=dt, rngs=rngs)
      layers.set_pointwise(self, cfg.pointwise)
      return
    groups = o if cfg.scu == "depthwise" else 1
    self.scu_conv1 = _conv(o, o, 3, stride=2, padding=1, groups=groups, bias=True, dtype=dt, rngs=rngs)
    self.scu_conv2 = _conv(o, o, 1, padding=1, bias=True, dtype=dt, rngs=rngs)
    self.scu_bn1 = BatchNorm(o, **bn)
    self.scu_conv3 = _conv(o, o, 3, stride=2, padding=1, groups=groups, bias=True, dtype=dt, rngs=rngs)
    self.scu_conv4 = _conv(o, o, 1, padding=1, bias=True, dtype=dt, rngs=rngs)
    self.scu_bn2 = BatchNorm(o, **bn)
    self.mt_q = _conv(o, o, 1, dtype=dt, rngs=rngs)
    self.mt_k = _conv(o, o, 1, dtype=dt, rngs=rngs)
    self.mt_v = _conv(o, o, 1, dtype=dt, rngs=rngs)
    self.mt_wz = _conv(o, o, 1, dtype=dt, rngs=rngs)
    self.mt_wz_bn = BatchNorm(o, **bn)
    self.mt_bn = BatchNorm(o, **bn)
    z = 2 * o
    self.se_fc1 = _linear(z, z // cfg.se_reduction, bias=False, dtype=dt, rngs=rngs)
    self.se_fc2 = _linear(z // cfg.se_reduction, z, bias=False, dtype=dt, rngs=rngs)
    self.head_fc1 = _linear(z, cfg.head_width, dtype=dt, rngs=rngs)
    self.head_bn = BatchNorm(cfg.head_width, **bn)
    self.head_fc2 = _linear(cfg.head_width, cfg.num_classes, dtype=dt, rngs=rngs)
    layers.set_pointwise(self, cfg.pointwise)  # 1x1 convs (the padded SCU ones too) as matmuls on CPU

  # -------------------------------------------------------------- steps 1-3
  def segment(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """Backbone, OCR and segmentation decoder: {"aux": A, "seg": X_s, "feats": X_I} (NHWC)."""
    cfg = self.config
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"LiSiam expects (B, H, W, 3) NHWC images, got shape {x.shape}")
    if cfg.channel_order == "bgr":
      x = x[..., ::-1]
    taps = self.backbone(x, train)
    x_mid, x_out = taps["block4"], taps["block12"]
    aux = self.aux_cls(self.aux_conv(x_mid, train))
    x0 = self.bottleneck(x_out, train)
    b, h, w, o = x0.shape
    t = cfg.transform_channels
    # Spatial gather: one softmax over the h*w positions per soft region.
    weights = jax.nn.softmax(aux.reshape(b, h * w, -1).astype(jnp.float32), axis=1)
    regions = jnp.einsum("bpk,bpc->bkc", weights, x0.reshape(b, h * w, o).astype(jnp.float32))
    regions = regions.astype(x0.dtype)[:, :, None, :]               # (B, K, 1, C): a K x 1 map
    q = x0
    for layer in self.query_project:
      q = layer(q, train)
    k = regions
    for layer in self.key_project:
      k = layer(k, train)
    v = self.value_project(regions, train)
    sim = jnp.einsum("bpt,bkt->bpk", q.reshape(b, h * w, t).astype(jnp.float32),
                     k.reshape(b, -1, t).astype(jnp.float32)) * (t ** -0.5)
    att = jax.nn.softmax(sim, axis=-1)
    ctx = jnp.einsum("bpk,bkt->bpt", att, v.reshape(b, -1, t).astype(jnp.float32)).reshape(b, h, w, t)
    ctx = self.out_project(ctx.astype(x0.dtype), train)
    feats = self.context_bottleneck(jnp.concatenate([ctx, x0], axis=-1), train)
    return {"aux": aux, "seg": self.seg_cls(feats), "feats": feats}

  # -------------------------------------------------------------- steps 4-6
  def scu(self, feats: jax.Array, train: bool, key1: jax.Array | None = None,
          key2: jax.Array | None = None) -> jax.Array:
    """The separable convolution unit: X_I -> X_c (37 -> 19 -> 21 -> 11 -> 13 at 299 px)."""
    cfg = self.config
    x = self.scu_bn1(self.scu_conv2(self.scu_conv1(feats)), train)
    x = jax.nn.relu(channel_dropout(x, cfg.scu_dropout, key1, train))
    x = self.scu_bn2(self.scu_conv4(self.scu_conv3(x)), train)
    return channel_dropout(x, cfg.scu_dropout, key2, train)

  def classify(self, feats: jax.Array, seg: jax.Array, train: bool, rng: jax.Array | None = None) -> jax.Array:
    """SCU, mask-guided transformer, SE and MLP head (or model F's head): (B, 2) logits."""
    cfg = self.config
    if cfg.head == "seg_logits":
      y = self.dr_conv2(self.dr_conv1(seg))
      return jnp.mean(y.astype(jnp.float32), axis=(1, 2))
    keys = jax.random.split(rng, 3) if (train and rng is not None) else (None, None, None)
    x = self.scu(feats, train, keys[0], keys[1])                                 # X_c
    b, n, m, o = x.shape
    g = resize_bilinear(jax.nn.softmax(seg.astype(jnp.float32), axis=-1), (n, m)).astype(x.dtype)
    x_r, x_f = x * g[..., 0:1], x * g[..., 1:2]
    q = self.mt_q(x_f).reshape(b, n * m, o).astype(jnp.float32)
    k = self.mt_k(x_r).reshape(b, n * m, o).astype(jnp.float32)
    v = self.mt_v(x_r).reshape(b, n * m, o).astype(jnp.float32)
    att = jax.nn.softmax(jnp.einsum("bic,bjc->bij", q, k), axis=-1)           # no 1/sqrt(d)
    att = dropout(att, cfg.attn_dropout, keys[2], train)
    y = jnp.einsum("bij,bjc->bic", att, v).reshape(b, n, m, o).astype(x.dtype)
    y = self.mt_wz_bn(self.mt_wz(y), train) + x_f
    z = jnp.concatenate([x, self.mt_bn(y, train)], axis=-1)
    s = jnp.mean(z.astype(jnp.float32), axis=(1, 2)).astype(z.dtype)
    s = jax.nn.sigmoid(self.se_fc2(jax.nn.relu(self.se_fc1(s))))
    z = z * s[:, None, None, :]
    hdn = jnp.mean(z.astype(jnp.float32), axis=(1, 2)).astype(z.dtype)
    hdn = jax.nn.relu(self.head_bn(self.head_fc1(hdn), train))
    return self.head_fc2(hdn).astype(jnp.float32)

  def __call__(self, x: jax.Array, train: bool, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    """One full branch: {"aux", "seg", "feats", "logits"} (float32 heads)."""
    out = self.segment(x, train)
    out["logits"] = self.classify(out["feats"], out["seg"], train, rng)
    out["aux"] = out["aux"].astype(jnp.float32)
    out["seg"] = out["seg"].astype(jnp.float32)
    return out


def build(config: LiSiamConfig, seed: int = 0) -> LiSiam:
  return LiSiam(config, rngs=nnx.Rngs(seed))


def param_group(path: str) -> str:
  """"seg" or "cls" for a parameter path ("backbone/conv1/kernel" or "backbone.conv1.kernel")."""
  top = path.replace("/", ".").split(".", 1)[0]
  return "seg" if top in SEG_MODULES else "cls"


# ----------------------------------------------------------------- flat state
def _path_str(path) -> str:
  return ".".join(str(p) for p in path)


def _variables(model: LiSiam) -> dict[str, Any]:
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  return {_path_str(path): var for path, var in nnx.to_flat_state(state)}


def flatten(model: LiSiam) -> dict[str, np.ndarray]:
  """Parameters and BatchNorm statistics as {"backbone.conv1.kernel": array, ...}."""
  return {k: np.asarray(var.get_value()) for k, var in _variables(model).items()}


def assign(model: LiSiam, flat: Mapping[str, Any], where: str = "checkpoint") -> LiSiam:
  """Writes {path: array} into ``model`` in place after checking every name and shape."""
  variables = _variables(model)
  shapes = {k: tuple(v.shape) for k, v in variables.items()}
  missing = sorted(set(shapes) - set(flat))
  unexpected = sorted(set(flat) - set(shapes))
  bad = sorted(f"{k}: checkpoint {tuple(np.shape(flat[k]))} vs model {shapes[k]}"
               for k in set(flat) & set(shapes) if tuple(np.shape(flat[k])) != shapes[k])
  if missing or unexpected or bad:
    raise CheckpointError(
        f"{where} does not match the LiSiam model:"
        + (f"\n  missing ({len(missing)}): {missing}" if missing else "")
        + (f"\n  unexpected ({len(unexpected)}): {unexpected}" if unexpected else "")
        + (f"\n  shape mismatch ({len(bad)}): {bad}" if bad else ""))
  check_values({k: flat[k] for k in shapes}, where)
  for k, var in variables.items():
    var.set_value(jnp.asarray(flat[k], jnp.float32))
  return model


# ----------------------------------------------------------------- release checkpoints
# NNX module path -> the release's torch module path (LiSiam_A / LiSiam_F), besides backbone_net.
RELEASE_MODULES: dict[str, str] = {
    "aux_conv.conv": "auxiliary_decoder.0", "aux_conv.bn": "auxiliary_decoder.1",
    "aux_cls": "auxiliary_decoder.4",
    "bottleneck.conv": "bottleneck.0", "bottleneck.bn": "bottleneck.1",
    **{f"{p}_project.{i}.{m}": f"object_context_block.{p}_project.{i}.{j}"
       for p in ("query", "key") for i in (0, 1) for m, j in (("conv", 0), ("bn", 1))},
    **{f"{p}_project.{m}": f"object_context_block.{p}_project.{j}"
       for p in ("value", "out") for m, j in (("conv", 0), ("bn", 1))},
    "context_bottleneck.conv": "object_context_block.bottleneck.0",
    "context_bottleneck.bn": "object_context_block.bottleneck.1",
    "seg_cls": "segDecoder.1",
    "scu_conv1": "clsE.0", "scu_conv2": "clsE.1", "scu_bn1": "clsE.2",
    "scu_conv3": "clsE.5", "scu_conv4": "clsE.6", "scu_bn2": "clsE.7",
    "mt_q": "Qf", "mt_k": "Kf", "mt_v": "Vf", "mt_wz": "W_z.0", "mt_wz_bn": "W_z.1", "mt_bn": "BN",
    "se_fc1": "se.fc.0", "se_fc2": "se.fc.2",
    "head_fc1": "getScore.0", "head_bn": "getScore.1", "head_fc2": "getScore.3",
    "dr_conv1": "clsDR.0", "dr_conv2": "clsDR.1",
}
_BN_LEAF = {"scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
_BACKBONE_TORCH = "backbone_net."


def release_key(path: str) -> str:
  """NNX path (not the backbone's) -> the release's state-dict key."""
  module, leaf = path.rsplit(".", 1)
  if module not in RELEASE_MODULES:
    raise KeyError(f"no release name for the LiSiam module {module!r}")
  name = "weight" if leaf in ("kernel", "scale") else _BN_LEAF.get(leaf, leaf)
  return f"{RELEASE_MODULES[module]}.{name}"


def _to_torch_layout(v: np.ndarray, path: str) -> np.ndarray:
  if path.endswith("kernel"):
    return v.transpose(3, 2, 0, 1) if v.ndim == 4 else v.T     # HWIO -> OIHW; (in, out) -> (out, in)
  return v


def _from_torch_layout(v: np.ndarray, path: str) -> np.ndarray:
  if path.endswith("kernel"):
    return v.transpose(2, 3, 1, 0) if v.ndim == 4 else v.T     # OIHW -> HWIO; (out, in) -> (in, out)
  return v


def to_release_state_dict(model: LiSiam) -> dict[str, np.ndarray]:
  """The model under the release's keys, torch layouts (timm-style 4-D backbone pointwise kernels)."""
  out = {_BACKBONE_TORCH + k: v for k, v in xparams.to_state_dict(model.backbone).items()}
  for p, v in flatten(model).items():
    if p.startswith("backbone."):
      continue
    out[release_key(p)] = np.ascontiguousarray(_to_torch_layout(v, p))
  return out


def load_release_state_dict(source: str | os.PathLike | Mapping[str, Any],
                            model_or_config: LiSiam | LiSiamConfig | None = None) -> LiSiam:
  """Loads a release checkpoint (``LiSiam_A``, or ``LiSiam_F`` into a ``head="seg_logits"`` model).

  Args:
    source: a ``.pth``/``.safetensors`` path (read safely by ``weights.read_state_dict``;
      DDP's ``module.`` is stripped) or a state dict {key: tensor or array}.
    model_or_config: a model to fill in place, or a config (default ``LiSiamConfig()``; the
      release checkpoints are BGR: pass ``channel_order="bgr"`` for their inputs).
  Raises:
    CheckpointError: every missing, unexpected and mis-shaped key, in one message.
  """
  if isinstance(source, (str, os.PathLike)):
    where, sd = os.fspath(source), read_state_dict(source)
  elif isinstance(source, Mapping):
    where, sd = "state dict", dict(source)
  else:
    raise TypeError(f"load_release_state_dict: source must be a path or a state dict, got {type(source).__name__}")
  sd = strip_prefixes(dict(sd), ("module.",))
  if isinstance(model_or_config, LiSiam):
    model = model_or_config
  else:
    cfg = model_or_config or LiSiamConfig()
    model = nnx.eval_shape(lambda: LiSiam(cfg, rngs=nnx.Rngs(0)))
  cfg = model.config
  shapes = {p: tuple(v.shape) for p, v in _variables(model).items()}
  problems = []
  backbone_sd = xparams.normalise_state_dict({k: v for k, v in sd.items() if k.startswith(_BACKBONE_TORCH)})
  flat: dict[str, np.ndarray] = {}
  try:
    flat.update({"backbone." + k: v for k, v in xparams.torch_to_nnx(backbone_sd, cfg.backbone, where).items()})
  except CheckpointError as e:
    problems.append(f"backbone_net.*: {e}")
  heads = {p: s for p, s in shapes.items() if not p.startswith("backbone.")}
  expected = {release_key(p): p for p in heads}
  rest = {k: v for k, v in sd.items() if not k.startswith(_BACKBONE_TORCH) and not k.endswith("num_batches_tracked")}
  missing = sorted(set(expected) - set(rest))
  unexpected = sorted(set(rest) - set(expected))
  bad = []
  for key, p in expected.items():
    if key not in rest:
      continue
    v = _from_torch_layout(to_numpy(rest[key]), p)
    if tuple(v.shape) != heads[p]:
      bad.append(f"{key}: checkpoint {tuple(np.shape(rest[key]))} vs model "
                 f"{tuple(_to_torch_layout(np.zeros(heads[p]), p).shape)}")
    else:
      flat[p] = np.asarray(v, np.float32)
  if missing or unexpected or bad:
    problems.append("heads:" + (f"\n  missing ({len(missing)}): {missing}" if missing else "")
                    + (f"\n  unexpected ({len(unexpected)}): {unexpected}" if unexpected else "")
                    + (f"\n  shape mismatch ({len(bad)}): {sorted(bad)}" if bad else ""))
  if problems:
    raise CheckpointError(f"{where} does not match the LiSiam model (head={cfg.head!r}, scu={cfg.scu!r}):\n"
                          + "\n".join(problems))
  check_values(flat, where)
  return assign(model, flat, where)
