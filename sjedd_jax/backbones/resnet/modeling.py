"""ResNet (torchvision v1.5) in Flax NNX, returning the C2..C5 feature maps.

Numerically the same network as ``torchvision.models.resnet{18,34,50,101}`` (and
timm's ``resnet*``, which use torchvision's layout and names) without the
pooling/``fc`` head:

* stem ``"torchvision"``: 7x7 stride-2 conv (padding 3) + BatchNorm + ReLU +
  3x3 stride-2 max pool (padding 1, padded with -inf); stem ``"tiny"``: 3x3
  stride-2 conv (padding 1) + BatchNorm + ReLU, no pool;
* four stages of ``BasicBlock`` (two 3x3 convs) or ``Bottleneck`` (1x1, 3x3,
  1x1 with 4x expansion; the stride sits in the 3x3 conv, torchvision's "v1.5");
  the first block of a stage has a ``downsample`` (1x1 conv + BatchNorm) when the
  stride or the width changes;
* convolutions without bias and with explicit paddings (never "SAME", whose
  asymmetric padding differs from torch's at stride 2); BatchNorm with torch's
  semantics (``sjedd_jax.backbones.layers.BatchNorm``: momentum 0.1, eps 1e-5,
  unbiased running variance);
* ``replace_stride_with_dilation`` as torchvision: a stage whose flag is set
  keeps stride 1 and dilates its 3x3 convs instead (the first block's 3x3 uses
  the previous dilation). torchvision refuses dilation in ``BasicBlock``; here it
  is allowed with timm's rule (conv1 takes the previous dilation, conv2 the new).

Attribute names mirror torchvision's (``conv1``, ``bn1``, ``layer1[0].conv2``,
``layer1[0].downsample[0]``), so an NNX path is the torch key with the leaf
renamed (``weight`` -> ``kernel``/``scale``, ``running_mean`` -> ``mean``).
Initialisation as torchvision: convs ``kaiming_normal_(mode="fan_out")``,
BatchNorm scale 1 and bias 0 (``zero_init_residual`` zeroes each block's last
BatchNorm scale).

Example::

  cfg = resnet.get_config("resnet34")
  model = resnet.ResNet(cfg, rngs=nnx.Rngs(0))
  feats = model(images_nhwc, train=False)      # {"C2": (B, H/4, W/4, 64), ..., "C5": ...}
  frozen = resnet.frozen_filter(("stem", "layer1"))   # nnx filter of the frozen params
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sjedd_jax.backbones.layers import BatchNorm, kaiming_normal_fan_out, max_pool

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_EXPANSION = {"basic": 1, "bottleneck": 4}
_STEMS = ("torchvision", "tiny")

STAGES = ("stem", "layer1", "layer2", "layer3", "layer4")
FEATURES = ("C2", "C3", "C4", "C5")


def _tuple(x, kind=int) -> tuple:
  return tuple(kind(v) for v in x)


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  """Sizes of a ResNet. Defaults: ResNet-18.

  Attributes:
    block: "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101, expansion 4).
    layers: blocks per stage (4 stages).
    widths: the stages' base widths (torchvision's ``planes``); a stage outputs
      ``width * expansion`` channels.
    stem: "torchvision" (7x7/2 conv + max pool, overall stride 4) or "tiny"
      (3x3/2 conv, no pool, overall stride 2).
    stem_width: output channels of the stem conv.
    strides: each stage's stride (torchvision: 1, 2, 2, 2).
    replace_stride_with_dilation: torchvision's flags for layer2, layer3, layer4.
    zero_init_residual: zero each block's last BatchNorm scale at initialisation.
    bn_momentum: torch's BatchNorm momentum (weight of the new batch).
    bn_eps: BatchNorm epsilon.
    in_channels: image channels.
    dtype: compute dtype ("float32" or "bfloat16"); parameters and BatchNorm
      statistics stay float32.
  """

  block: str = "basic"
  layers: tuple[int, ...] = (2, 2, 2, 2)
  widths: tuple[int, ...] = (64, 128, 256, 512)
  stem: str = "torchvision"
  stem_width: int = 64
  strides: tuple[int, ...] = (1, 2, 2, 2)
  replace_stride_with_dilation: tuple[bool, ...] = (False, False, False)
  zero_init_residual: bool = False
  bn_momentum: float = 0.1
  bn_eps: float = 1e-5
  in_channels: int = 3
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("layers", "widths", "strides"):  # lists from JSON -> tuples
      object.__setattr__(self, name, _tuple(getattr(self, name)))
      if len(getattr(self, name)) != 4 or min(getattr(self, name)) < 1:
        raise ValueError(f"ResNetConfig: {name} must be 4 positive ints, got {getattr(self, name)}")
    flags = tuple(self.replace_stride_with_dilation)
    if len(flags) != 3 or not all(isinstance(f, bool) for f in flags):
      raise ValueError("ResNetConfig: replace_stride_with_dilation must be 3 bools (layer2, layer3, "
                       f"layer4), got {self.replace_stride_with_dilation!r}")
    object.__setattr__(self, "replace_stride_with_dilation", flags)
    if self.block not in _EXPANSION:
      raise ValueError(f"ResNetConfig: block {self.block!r} not one of {sorted(_EXPANSION)}")
    if self.stem not in _STEMS:
      raise ValueError(f"ResNetConfig: stem {self.stem!r} not one of {list(_STEMS)}")
    if self.dtype not in _DTYPES:
      raise ValueError(f"ResNetConfig: dtype {self.dtype!r} not one of {sorted(_DTYPES)}")
    if self.stem_width < 1 or self.in_channels < 1:
      raise ValueError(f"ResNetConfig: stem_width {self.stem_width} and in_channels {self.in_channels} "
                       "must be positive")

  @property
  def expansion(self) -> int:
    return _EXPANSION[self.block]

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def channels(self) -> dict[str, int]:
    """Output channels of C2..C5."""
    return {f: w * self.expansion for f, w in zip(FEATURES, self.widths)}

  def stage_geometry(self) -> list[tuple[int, int, int]]:
    """(stride, first-block dilation, dilation) of each stage, as torchvision's ``_make_layer``."""
    out, dilation = [], 1
    flags = (False,) + self.replace_stride_with_dilation
    for stride, dilate in zip(self.strides, flags):
      previous = dilation
      if dilate:
        dilation *= stride
        stride = 1
      out.append((stride, previous, dilation))
    return out

  @property
  def feature_strides(self) -> dict[str, int]:
    """Stride of C2..C5 relative to the input (e.g. 4, 8, 16, 32)."""
    total = 4 if self.stem == "torchvision" else 2
    out = {}
    for f, (stride, _, _) in zip(FEATURES, self.stage_geometry()):
      total *= stride
      out[f] = total
    return out

  def replace(self, **kw) -> "ResNetConfig":
    return dataclasses.replace(self, **kw)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "ResNetConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"ResNetConfig: unknown field(s) {unknown}; known fields are {sorted(names)}")
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


PRESETS: dict[str, ResNetConfig] = {
    "resnet18": ResNetConfig(block="basic", layers=(2, 2, 2, 2)),
    "resnet34": ResNetConfig(block="basic", layers=(3, 4, 6, 3)),
    "resnet50": ResNetConfig(block="bottleneck", layers=(3, 4, 6, 3)),
    "resnet101": ResNetConfig(block="bottleneck", layers=(3, 4, 23, 3)),
    # Section 9 of the MIL-ranking spec: trains from scratch on 64 px images on CPU.
    "tiny": ResNetConfig(block="basic", layers=(1, 1, 1, 1), widths=(16, 32, 64, 128), stem="tiny",
                         stem_width=16),
}


def get_config(name: str = "resnet18", **overrides) -> ResNetConfig:
  """A preset ("resnet18", "resnet34", "resnet50", "resnet101", "tiny") with field overrides."""
  key = name.lower().replace("-", "")
  if key not in PRESETS:
    raise KeyError(f"unknown ResNet preset {name!r}; presets are {sorted(PRESETS)}")
  return PRESETS[key].replace(**overrides)


# ------------------------------------------------------------------ modules
def conv(cin: int, cout: int, kernel: int, cfg: ResNetConfig, *, rngs: nnx.Rngs, stride: int = 1,
         padding: int = 0, dilation: int = 1) -> nnx.Conv:
  """``torch.nn.Conv2d(cin, cout, kernel, stride, padding, dilation, bias=False)`` on NHWC."""
  return nnx.Conv(cin, cout, (kernel, kernel), strides=(stride, stride),
                  padding=((padding, padding), (padding, padding)), kernel_dilation=(dilation, dilation),
                  use_bias=False, dtype=cfg.compute_dtype, param_dtype=jnp.float32,
                  kernel_init=kaiming_normal_fan_out, rngs=rngs)


def batch_norm(channels: int, cfg: ResNetConfig, zero: bool = False) -> BatchNorm:
  bn = BatchNorm(channels, momentum=cfg.bn_momentum, eps=cfg.bn_eps)
  if zero:
    bn.scale.set_value(jnp.zeros_like(bn.scale.get_value()))
  return bn


def _downsample(cin: int, cout: int, stride: int, cfg: ResNetConfig, rngs: nnx.Rngs) -> nnx.List | None:
  """torchvision's ``nn.Sequential(conv1x1(cin, cout, stride), norm(cout))``, or None."""
  if stride == 1 and cin == cout:
    return None
  return nnx.List([conv(cin, cout, 1, cfg, stride=stride, rngs=rngs), batch_norm(cout, cfg)])


def _shortcut(downsample: nnx.List | None, x: jax.Array, train: bool) -> jax.Array:
  if downsample is None:
    return x
  return downsample[1](downsample[0](x), train)


class BasicBlock(nnx.Module):
  """Two 3x3 convs (stride in the first) + identity or projection shortcut."""

  def __init__(self, cin: int, planes: int, stride: int, first_dilation: int, dilation: int,
               cfg: ResNetConfig, *, rngs: nnx.Rngs):
    self.conv1 = conv(cin, planes, 3, cfg, stride=stride, padding=first_dilation,
                      dilation=first_dilation, rngs=rngs)
    self.bn1 = batch_norm(planes, cfg)
    self.conv2 = conv(planes, planes, 3, cfg, padding=dilation, dilation=dilation, rngs=rngs)
    self.bn2 = batch_norm(planes, cfg, zero=cfg.zero_init_residual)
    self.downsample = _downsample(cin, planes, stride, cfg, rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x), train))
    y = self.bn2(self.conv2(y), train)
    return jax.nn.relu(y + _shortcut(self.downsample, x, train))


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (stride and dilation here: v1.5), 1x1 expand (x4) + shortcut."""

  def __init__(self, cin: int, planes: int, stride: int, first_dilation: int, dilation: int,
               cfg: ResNetConfig, *, rngs: nnx.Rngs):
    # One 3x3: ResNet passes a stage's first block the previous dilation, the others the stage's.
    del dilation
    cout = planes * 4
    self.conv1 = conv(cin, planes, 1, cfg, rngs=rngs)
    self.bn1 = batch_norm(planes, cfg)
    self.conv2 = conv(planes, planes, 3, cfg, stride=stride, padding=first_dilation,
                      dilation=first_dilation, rngs=rngs)
    self.bn2 = batch_norm(planes, cfg)
    self.conv3 = conv(planes, cout, 1, cfg, rngs=rngs)
    self.bn3 = batch_norm(cout, cfg, zero=cfg.zero_init_residual)
    self.downsample = _downsample(cin, cout, stride, cfg, rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = jax.nn.relu(self.bn1(self.conv1(x), train))
    y = jax.nn.relu(self.bn2(self.conv2(y), train))
    y = self.bn3(self.conv3(y), train)
    return jax.nn.relu(y + _shortcut(self.downsample, x, train))


class ResNet(nnx.Module):
  """ResNet backbone: ``model(x, train) -> {"C2", "C3", "C4", "C5"}`` (NHWC).

  Args:
    config: a ``ResNetConfig`` (``get_config("resnet50")``).
    rngs: initialisation keys (only used here; the call takes none).
  Call:
    x: (B, H, W, in_channels) images, normalised with ``MEAN``/``STD``.
    train: BatchNorm mode; ``True`` normalises with batch statistics and updates
      the running ones in place (read them with ``nnx.state(model, nnx.BatchStat)``).
  """

  def __init__(self, config: ResNetConfig, *, rngs: nnx.Rngs):
    cfg = self.config = config
    if cfg.stem == "torchvision":
      self.conv1 = conv(cfg.in_channels, cfg.stem_width, 7, cfg, stride=2, padding=3, rngs=rngs)
    else:
      self.conv1 = conv(cfg.in_channels, cfg.stem_width, 3, cfg, stride=2, padding=1, rngs=rngs)
    self.bn1 = batch_norm(cfg.stem_width, cfg)
    block_cls = BasicBlock if cfg.block == "basic" else Bottleneck
    cin = cfg.stem_width
    for i, (planes, n, (stride, first_dilation, dilation)) in enumerate(
        zip(cfg.widths, cfg.layers, cfg.stage_geometry())):
      blocks = []
      for j in range(n):
        blocks.append(block_cls(cin, planes, stride if j == 0 else 1,
                                first_dilation if j == 0 else dilation, dilation, cfg, rngs=rngs))
        cin = planes * cfg.expansion
      setattr(self, f"layer{i + 1}", nnx.List(blocks))

  def stem(self, x: jax.Array, train: bool) -> jax.Array:
    x = jax.nn.relu(self.bn1(self.conv1(x), train))
    if self.config.stem == "torchvision":
      x = max_pool(x, 3, 2, 1)
    return x

  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    cfg = self.config
    if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
      raise ValueError(f"ResNet: expected NHWC images with {cfg.in_channels} channels, got shape {x.shape}")
    x = self.stem(x.astype(cfg.compute_dtype), train)
    out = {}
    for name, stage in zip(FEATURES, (self.layer1, self.layer2, self.layer3, self.layer4)):
      for block in stage:
        x = block(x, train)
      out[name] = x
    return out


# ------------------------------------------------------------ frozen stages
def stage_of(path: Sequence[Any], prefix: Sequence[Any] = ()) -> str | None:
  """The stage ("stem", "layer1".."layer4") that a variable path of a ResNet belongs to.

  ``prefix`` is where the ResNet sits in a larger model (``("backbone",)``); a
  path outside it gives None.
  """
  path, prefix = tuple(str(p) for p in path), tuple(str(p) for p in prefix)
  if path[:len(prefix)] != prefix or len(path) <= len(prefix):
    return None
  head = path[len(prefix)]
  if head in ("conv1", "bn1"):
    return "stem"
  return head if head in STAGES else None


def frozen_filter(stages: Sequence[str] = ("stem", "layer1"), prefix: Sequence[Any] = ()) -> Any:
  """An nnx filter matching the ``nnx.Param``s of ``stages`` (SeqFakeFormer: stem + layer1).

  The caller excludes these from optimisation, e.g.
  ``nnx.state(model, nnx.Not(frozen_filter()))`` or zero updates via ``param_labels``.
  BatchNorm running statistics are ``nnx.BatchStat``, not matched: as in PyTorch
  (``requires_grad=False`` on a module left in train mode), a frozen stage's
  running statistics still update when the model is called with ``train=True``.
  """
  unknown = sorted(set(stages) - set(STAGES))
  if unknown:
    raise ValueError(f"frozen_filter: unknown stage(s) {unknown}; stages are {list(STAGES)}")
  chosen = frozenset(stages)
  prefix = tuple(prefix)

  def in_stages(path, value) -> bool:
    del value
    return stage_of(path, prefix) in chosen

  return nnx.All(nnx.Param, in_stages)


def param_labels(model: nnx.Module, frozen: Sequence[str] = ("stem", "layer1"),
                 prefix: Sequence[Any] = (), labels: tuple[str, str] = ("frozen", "trainable")) -> Any:
  """The tree of ``nnx.state(model, nnx.Param)`` with each leaf replaced by a label.

  Leaves of ``frozen`` stages (under ``prefix``) get ``labels[0]``, all others
  ``labels[1]``; for ``optax.multi_transform({"frozen": optax.set_to_zero(),
  "trainable": opt}, labels)``. ``model`` may be the whole model holding the ResNet.
  """
  is_frozen = frozen_filter(frozen, prefix)
  state = nnx.state(model, nnx.Param)
  return nnx.map_state(
      lambda path, v: labels[0] if is_frozen(path, v) else labels[1], state)


__all__ = ["BasicBlock", "Bottleneck", "FEATURES", "PRESETS", "ResNet", "ResNetConfig", "STAGES",
           "frozen_filter", "get_config", "param_labels", "stage_of"]
