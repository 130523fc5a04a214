"""Xception (Chollet 2017) in Flax NNX, in the layout and with the names of timm's
``legacy_xception`` and Cadene's ``pretrainedmodels`` Xception.

The backbone of MC-LCR (spec mc_lcr.md 2.1) and LiSiam (lisiam.md 2 item 1):

* stem: ``conv1`` 3x3 stride 2 pad 0, ``bn1``, ReLU, ``conv2`` 3x3 pad 0, ``bn2``,
  ReLU (= ``act2``); no conv biases anywhere;
* ``block1..blockN``: each a ``rep`` list mirroring torch's ``nn.Sequential``
  positions ([ReLU, SeparableConv2d, BatchNorm] x reps, then ``MaxPool(3, s, 1)`` when
  the block is strided; block1 has no leading ReLU) plus a ``skip`` 1x1 conv +
  ``skipbn`` when the width or the stride changes (else identity). Entry and middle
  blocks widen on their first separable conv ("grow first"), the exit block
  (timm's block12) on its last. The block's first ReLU is not in place in torch, so
  the skip sees the block's un-ReLU'd input, as here;
* with ``upto="act4"``: ``conv3`` (separable) + ``bn3`` + ReLU, ``conv4`` + ``bn4`` + ReLU.

A separable conv is ``conv1`` (depthwise 3x3 pad 1, ``feature_group_count=C``, kernel
(3, 3, 1, C)) then ``pointwise`` (1x1), so the state paths are the torch keys with
``weight`` renamed (``block2.rep.1.conv1.kernel`` <- ``block2.rep.1.conv1.weight``;
BN ``block2.rep.2.{scale,bias,mean,var}``). BatchNorm is ``layers.BatchNorm``
(torch's momentum 0.1, eps 1e-5, unbiased running variance).

``Xception(cfg)(x, train)`` takes NHWC images normalised as ``(x - 0.5) / 0.5`` and
returns a dict of taps, named after the full model's modules:

* ``act2``: stem output (MC-LCR's F_b1; timm ``feature_info`` ``act2``);
* ``block2_in``: ReLU(block1 output) (F_b2; timm ``block2.rep.0``);
* ``block3_in``: ReLU(block2 output) (F_b3; timm ``block3.rep.0``);
* ``block4``: output of the first middle block (block4 in the full model, LiSiam's
  ``x_mid``; the module is ``block{len(entry_widths) + 1}``, ``config.mid_block``);
* ``block12``: output of the exit block (block12 in the full model, LiSiam's ``x_out``;
  ``config.exit_block``);
* ``act4``: only with ``upto="act4"``: ReLU(bn4(conv4(ReLU(bn3(conv3(block12))))));
* ``gf``: global average pool of ``block12`` (or of ``act4``: ``gf_layer``).

Shapes at 256 px for the full model (mc_lcr.md 2.1): act2 125x125x64, block2_in
63x63x128, block3_in 32x32x256, block4 16x16x728, block12 8x8x1024, act4 8x8x2048.
LiSiam's release sets block3 and block12 to stride 1 (``block_strides={"block3": 1,
"block12": 1}``): 299 -> block12 37x37x1024.

Example::

  cfg = xception.get_config("xception", block_strides={"block3": 1, "block12": 1})
  model = xception.Xception(cfg, rngs=nnx.Rngs(0))
  taps = model(jnp.zeros((2, 299, 299, 3)), train=False)   # taps["block12"]: (2, 37, 37, 1024)
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from sjedd_jax.autodiff import custom_backward
from sjedd_jax.backbones.layers import BatchNorm, backend_impl, kaiming_normal_fan_out, max_pool, recomputed

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
_UPTO = ("block12", "act4")


@dataclasses.dataclass(frozen=True)
class XceptionConfig:
  """Widths and options of an Xception. Defaults: timm ``legacy_xception`` / Cadene.

  Blocks are numbered ``block1..blockN`` in order: one entry block per
  ``entry_widths`` entry (widths are the block outputs; the middle width is the last
  one), ``middle_blocks`` middle blocks, then the exit block (middle width ->
  ``exit_width``, grow last). N = len(entry_widths) + middle_blocks + 1 (12 for timm).

  Attributes:
    in_channels: image channels.
    stem_widths: outputs of conv1 and conv2.
    entry_widths: outputs of the entry blocks (at least 2).
    entry_reps: separable convs per entry block.
    middle_blocks: number of middle blocks (at least 1).
    middle_reps: separable convs per middle block.
    exit_width: output of the exit block.
    exit_reps: separable convs of the exit block.
    head_widths: outputs of conv3 and conv4 (built only with ``upto="act4"``).
    block_strides: one stride per block; ``None`` is timm's (2 for the entry and exit
      blocks, 1 for the middle). A mapping ``{"block3": 1, "block12": 1}`` overrides
      single blocks of the default (LiSiam's release) and is stored as the full tuple.
      A stride-1 block has no MaxPool and an unstrided skip (pretrained shapes unchanged).
    upto: "block12" (stop after the exit block: LiSiam and MC-LCR) or "act4" (run
      conv3/bn3/act3/conv4/bn4/act4).
    gf_layer: the map pooled into the ``gf`` tap, "block12" or "act4" (needs upto="act4").
    bn_momentum: torch's BatchNorm momentum (weight of the new batch).
    bn_eps: BatchNorm epsilon.
    dtype: compute dtype ("float32", "bfloat16"); parameters and BN statistics stay float32.
  """

  in_channels: int = 3
  stem_widths: tuple[int, int] = (32, 64)
  entry_widths: tuple[int, ...] = (128, 256, 728)
  entry_reps: int = 2
  middle_blocks: int = 8
  middle_reps: int = 3
  exit_width: int = 1024
  exit_reps: int = 2
  head_widths: tuple[int, int] = (1536, 2048)
  block_strides: Any = None
  upto: str = "block12"
  gf_layer: str = "block12"
  bn_momentum: float = 0.1
  bn_eps: float = 1e-5
  dtype: str = "float32"

  def __post_init__(self):
    for name in ("stem_widths", "entry_widths", "head_widths"):
      object.__setattr__(self, name, tuple(int(w) for w in getattr(self, name)))
    if len(self.stem_widths) != 2 or len(self.head_widths) != 2:
      raise ValueError(f"XceptionConfig: stem_widths {self.stem_widths} and head_widths "
                       f"{self.head_widths} need two entries each")
    if len(self.entry_widths) < 2:
      raise ValueError(f"XceptionConfig: entry_widths {self.entry_widths} needs at least 2 blocks "
                       "(the block2_in and block3_in taps)")
    if self.middle_blocks < 1:
      raise ValueError(f"XceptionConfig: middle_blocks {self.middle_blocks} must be >= 1 (the block4 tap)")
    for name in ("entry_reps", "middle_reps", "exit_reps"):
      if getattr(self, name) < 1:
        raise ValueError(f"XceptionConfig: {name} {getattr(self, name)} must be >= 1")
    widths = (*self.stem_widths, *self.entry_widths, self.exit_width, *self.head_widths, self.in_channels)
    if min(widths) < 1:
      raise ValueError(f"XceptionConfig: widths must be positive, got {widths}")
    object.__setattr__(self, "block_strides", self._resolve_strides(self.block_strides))
    if self.upto not in _UPTO:
      raise ValueError(f"XceptionConfig: upto {self.upto!r} not one of {list(_UPTO)}")
    if self.gf_layer not in _UPTO:
      raise ValueError(f"XceptionConfig: gf_layer {self.gf_layer!r} not one of {list(_UPTO)}")
    if self.gf_layer == "act4" and self.upto != "act4":
      raise ValueError("XceptionConfig: gf_layer='act4' needs upto='act4' (conv3/conv4 are built only then)")
    if self.dtype not in _DTYPES:
      raise ValueError(f"XceptionConfig: dtype {self.dtype!r} not one of {sorted(_DTYPES)}")

  @property
  def num_blocks(self) -> int:
    return len(self.entry_widths) + self.middle_blocks + 1

  @property
  def default_strides(self) -> tuple[int, ...]:
    return (2,) * len(self.entry_widths) + (1,) * self.middle_blocks + (2,)

  def _resolve_strides(self, strides, base: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """A full stride tuple from None (the default), a tuple, or a mapping {"blockN": s}
    applied to ``base`` (default: timm's pattern)."""
    n = self.num_blocks
    if strides is None:
      return self.default_strides
    if isinstance(strides, Mapping):
      out = list(base or self.default_strides)
      for name, s in strides.items():
        if not (isinstance(name, str) and name.startswith("block") and name[5:].isdigit()
                and 1 <= int(name[5:]) <= n):
          raise ValueError(f"XceptionConfig: block_strides key {name!r} is not one of block1..block{n}")
        out[int(name[5:]) - 1] = s
      strides = out
    strides = tuple(strides)
    if len(strides) != n:
      raise ValueError(f"XceptionConfig: block_strides {strides} has {len(strides)} entries, "
                       f"the model has {n} blocks")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in strides):
      raise ValueError(f"XceptionConfig: block_strides {strides} must be positive integers")
    return strides

  def block_specs(self) -> list[tuple[str, int, int, int, int, bool, bool]]:
    """(name, in, out, reps, stride, start_with_relu, grow_first) of every block, in order."""
    specs = []
    cin = self.stem_widths[1]
    for i, cout in enumerate(self.entry_widths):
      specs.append((cin, cout, self.entry_reps, i > 0, True))
      cin = cout
    for _ in range(self.middle_blocks):
      specs.append((cin, cin, self.middle_reps, True, True))
    specs.append((cin, self.exit_width, self.exit_reps, True, False))
    return [(f"block{i + 1}", a, b, r, s, swr, gf)
            for i, ((a, b, r, swr, gf), s) in enumerate(zip(specs, self.block_strides))]

  @property
  def mid_block(self) -> str:
    """Name of the first middle block (the ``block4`` tap)."""
    return f"block{len(self.entry_widths) + 1}"

  @property
  def exit_block(self) -> str:
    """Name of the exit block (the ``block12`` tap)."""
    return f"block{self.num_blocks}"

  @property
  def tap_channels(self) -> dict[str, int]:
    """Channels of every tap ``Xception.__call__`` returns."""
    out = {"act2": self.stem_widths[1], "block2_in": self.entry_widths[0],
           "block3_in": self.entry_widths[1], "block4": self.entry_widths[-1],
           "block12": self.exit_width}
    if self.upto == "act4":
      out["act4"] = self.head_widths[1]
    out["gf"] = out[self.gf_layer]
    return out

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  def replace(self, **kw) -> "XceptionConfig":
    """A copy with fields changed. A ``block_strides`` mapping changes single blocks of
    this config's strides; a new block count (``entry_widths``, ``middle_blocks``)
    without strides gets the default pattern."""
    strides = kw.pop("block_strides", None)
    new_count = "entry_widths" in kw or "middle_blocks" in kw
    cfg = dataclasses.replace(self, **kw, **({"block_strides": None} if new_count else {}))
    if strides is None:
      return cfg
    if isinstance(strides, Mapping):
      strides = cfg._resolve_strides(strides, base=cfg.block_strides)
    return dataclasses.replace(cfg, block_strides=tuple(strides))

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "XceptionConfig":
    d = dict(d)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
      raise ValueError(f"XceptionConfig: unknown field(s) {unknown}; known fields are {sorted(names)}")
    for k in ("stem_widths", "entry_widths", "head_widths", "block_strides"):   # JSON lists back to tuples
      if isinstance(d.get(k), list):
        d[k] = tuple(d[k])
    return cls(**d)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2, sort_keys=True)


PRESETS: dict[str, XceptionConfig] = {
    # timm legacy_xception / Cadene (ImageNet weights exist for it).
    "xception": XceptionConfig(),
    # MC-LCR's synthetic twin (mc_lcr.md 9): taps 29x29x32, 15x15x64, 8x8x128, GF 384 at 64 px.
    # conv3/conv4 widths (upto="act4" only) are ours: 1.5x and 2x the exit width.
    "tiny": XceptionConfig(stem_widths=(16, 32), entry_widths=(64, 128, 256), middle_blocks=2,
                           exit_width=384, head_widths=(576, 768)),
    # Unit tests.
    "test": XceptionConfig(stem_widths=(8, 16), entry_widths=(16, 32, 64), middle_blocks=1,
                           exit_width=96, head_widths=(128, 160)),
    # LiSiam's synthetic twin (lisiam.md 9): block1 32->64 s2, block2 64->96 s1, two middle
    # blocks of 2 reps, exit block3 96->128 s1: 64 px -> 128x15x15; x_mid = block3 output.
    "lisiam-tiny": XceptionConfig(stem_widths=(16, 32), entry_widths=(64, 96), middle_blocks=2,
                                  middle_reps=2, exit_width=128, head_widths=(192, 256),
                                  block_strides=(2, 1, 1, 1, 1)),
}
_ALIASES = {"legacy_xception": "xception", "xception-tiny": "lisiam-tiny", "lisiam_tiny": "lisiam-tiny"}


def get_config(name: str = "xception", **overrides) -> XceptionConfig:
  """A preset by name ("xception", "tiny", "test", "lisiam-tiny"), with field overrides.

  ``block_strides`` may be a full tuple or a mapping of single blocks, e.g.
  ``get_config("xception", block_strides={"block3": 1, "block12": 1})`` (LiSiam).
  Changing the block count (``entry_widths``, ``middle_blocks``) resets unstated
  strides to the default pattern.
  """
  key = name if name in PRESETS else _ALIASES.get(name.lower(), name)
  if key not in PRESETS:
    raise ValueError(f"unknown Xception preset {name!r}; presets are {sorted(PRESETS)}")
  return PRESETS[key].replace(**overrides)


def _conv(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, groups: int = 1,
          dtype, rngs: nnx.Rngs) -> nnx.Conv:
  """A bias-free torch-style conv (explicit symmetric padding), timm's kaiming_normal fan_out init."""
  return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding=((padding, padding), (padding, padding)),
                  feature_group_count=groups, use_bias=False, kernel_init=kaiming_normal_fan_out,
                  dtype=dtype, param_dtype=jnp.float32, rngs=rngs)


class ReLU(nnx.Module):
  """Placeholder for ``nn.ReLU`` in a ``rep`` list (keeps torch's index positions)."""

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    return jax.nn.relu(x)


class MaxPool(nnx.Module):
  """``nn.MaxPool2d(3, stride, 1)`` (pads with -inf) in a ``rep`` list."""

  def __init__(self, stride: int):
    self.stride = stride

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    del train
    return max_pool(x, 3, self.stride, 1)


class SeparableConv2d(nnx.Module):
  """Depthwise 3x3 pad 1 (``conv1``) then pointwise 1x1 (``pointwise``), no biases."""

  def __init__(self, cin: int, cout: int, *, dtype, rngs: nnx.Rngs):
    self.conv1 = _conv(cin, cin, 3, padding=1, groups=cin, dtype=dtype, rngs=rngs)
    self.pointwise = _conv(cin, cout, 1, dtype=dtype, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    del train
    return self.pointwise(self.conv1(x))


class Block(nnx.Module):
  """timm/Cadene's Xception ``Block``: ``rep`` (+ MaxPool when strided) plus the skip."""

  def __init__(self, cin: int, cout: int, reps: int, stride: int = 1, start_with_relu: bool = True,
               grow_first: bool = True, *, cfg: XceptionConfig, rngs: nnx.Rngs):
    dt = cfg.compute_dtype
    bn = dict(momentum=cfg.bn_momentum, eps=cfg.bn_eps, dtype=dt)
    if cout != cin or stride != 1:
      self.skip = _conv(cin, cout, 1, stride=stride, dtype=dt, rngs=rngs)
      self.skipbn = BatchNorm(cout, **bn)
    else:
      self.skip = None
      self.skipbn = None
    rep = []
    for i in range(reps):
      if grow_first:
        inc, outc = (cin if i == 0 else cout), cout
      else:
        inc, outc = cin, (cin if i < reps - 1 else cout)
      rep += [ReLU(), SeparableConv2d(inc, outc, dtype=dt, rngs=rngs), BatchNorm(outc, **bn)]
    if not start_with_relu:
      rep = rep[1:]
    if stride != 1:
      rep.append(MaxPool(stride))
    self.rep = nnx.List(rep)
    self.remat = False   # set_remat: recompute the block in the backward pass (when training)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not (self.remat and train):
      return self._forward(x, train)
    return recomputed(self, Block._forward, x, train)

  def _forward(self, x: jax.Array, train: bool) -> jax.Array:
    y = x
    for layer in self.rep:
      y = layer(y, train)
    skip = self.skipbn(self.skip(x), train) if self.skip is not None else x
    return y + skip


class Xception(nnx.Module):
  """Xception backbone; ``model(x, train)`` -> dict of taps (module docstring).

  Args:
    config: an ``XceptionConfig`` (default: timm's widths, up to block12).
    rngs: initialisation keys (timm's init: kaiming_normal fan_out convs, BN 1/0).
  """

  def __init__(self, config: XceptionConfig | None = None, *, rngs: nnx.Rngs):
    cfg = config or XceptionConfig()
    self.config = cfg
    dt = cfg.compute_dtype
    bn = dict(momentum=cfg.bn_momentum, eps=cfg.bn_eps, dtype=dt)
    s1, s2 = cfg.stem_widths
    self.conv1 = _conv(cfg.in_channels, s1, 3, stride=2, dtype=dt, rngs=rngs)
    self.bn1 = BatchNorm(s1, **bn)
    self.conv2 = _conv(s1, s2, 3, dtype=dt, rngs=rngs)
    self.bn2 = BatchNorm(s2, **bn)
    for name, cin, cout, reps, stride, swr, grow_first in cfg.block_specs():
      setattr(self, name, Block(cin, cout, reps, stride, swr, grow_first, cfg=cfg, rngs=rngs))
    if cfg.upto == "act4":
      h1, h2 = cfg.head_widths
      self.conv3 = SeparableConv2d(cfg.exit_width, h1, dtype=dt, rngs=rngs)
      self.bn3 = BatchNorm(h1, **bn)
      self.conv4 = SeparableConv2d(h1, h2, dtype=dt, rngs=rngs)
      self.bn4 = BatchNorm(h2, **bn)

  def blocks(self) -> list[tuple[str, Block]]:
    return [(f"block{i}", getattr(self, f"block{i}")) for i in range(1, self.config.num_blocks + 1)]

  def __call__(self, x: jax.Array, train: bool) -> dict[str, jax.Array]:
    """(B, H, W, C) normalised images -> {"act2", "block2_in", "block3_in", "block4",
    "block12", ["act4"], "gf"}; ``train`` selects batch statistics (and updates the
    running ones) or the running statistics."""
    cfg = self.config
    if x.ndim != 4 or x.shape[-1] != cfg.in_channels:
      raise ValueError(f"Xception expects (B, H, W, {cfg.in_channels}) NHWC images, got shape {x.shape}")
    x = x.astype(cfg.compute_dtype)
    x = jax.nn.relu(self.bn1(self.conv1(x), train))
    x = jax.nn.relu(self.bn2(self.conv2(x), train))
    taps = {"act2": x}
    for name, block in self.blocks():
      x = block(x, train)
      if name == "block1":
        taps["block2_in"] = jax.nn.relu(x)
      elif name == "block2":
        taps["block3_in"] = jax.nn.relu(x)
      if name == cfg.mid_block:
        taps["block4"] = x
    taps["block12"] = x
    if cfg.upto == "act4":
      x = jax.nn.relu(self.bn3(self.conv3(x), train))
      taps["act4"] = jax.nn.relu(self.bn4(self.conv4(x), train))
    g = taps[cfg.gf_layer]
    taps["gf"] = jnp.mean(g.astype(jnp.float32), axis=(1, 2)).astype(g.dtype)
    return taps


class ShiftedDepthwise(nnx.Module):
  """A 3x3, stride 1, padding 1 depthwise conv as nine shifted multiply-adds (kernel (3, 3, 1, C)).

  The same function and parameter (``kernel``) as ``nnx.Conv(C, C, (3, 3), padding=1,
  feature_group_count=C, use_bias=False)``, which XLA:CPU runs as a grouped convolution
  about 50x slower than this form at the twin's sizes (forward and backward).
  """

  def __init__(self, kernel: jax.Array | nnx.Param, dtype):
    self.kernel = kernel if isinstance(kernel, nnx.Param) else nnx.Param(kernel)
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    return shifted_depthwise(x.astype(self.dtype), self.kernel[...].astype(self.dtype))


def _shifted(x: jax.Array, k: jax.Array) -> jax.Array:
  h, w = x.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = xp[:, 0:h, 0:w, :] * k[0, 0, 0]
  for i in range(3):
    for j in range(3):
      if i or j:
        out = out + xp[:, i:i + h, j:j + w, :] * k[i, j, 0]
  return out


def _shifted_plain(x: jax.Array, k: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1 depthwise conv of NHWC ``x`` with ``k`` (3, 3, 1, C) as nine shifted
  multiply-adds. The backward is the same form with the kernel turned by 180 degrees (the input
  gradient) and one fused nine-output multiply-reduction (the kernel's): several times faster on
  XLA:CPU than differentiating the shifts, which pads a full-size tensor per tap, and it keeps
  only ``x``. The same function; the kernel gradient sums in another order (float rounding)."""
  return _shifted(x, k)


def _shifted_fwd(x, k):
  return _shifted(x, k), (x, k)


def _shifted_bwd(res, g):
  x, k = res
  h, w = x.shape[1:3]
  # The barrier keeps XLA from merging this pass's kernel-tap broadcasts with the forward's (the same
  # taps): a merged broadcast feeds two fusions, so XLA writes it out at the activation's full size.
  dx = _shifted(g, jax.lax.optimization_barrier(k)[::-1, ::-1])
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).astype(jnp.float32)
  gf = g.astype(jnp.float32)
  # One variadic reduction over W for the nine taps (XLA fuses it into one pass over x and g; nine
  # separate sums read them nine times, 6x slower), then the small sums over N and H.
  taps = tuple(xp[:, i:i + h, j:j + w, :] * gf for i in range(3) for j in range(3))
  rows = jax.lax.reduce(taps, tuple(jnp.zeros((), jnp.float32) for _ in taps),
                        lambda a, b: tuple(u + v for u, v in zip(a, b)), (2,))
  dk = jnp.stack(rows).sum(axis=(1, 2)).reshape(3, 3, 1, -1)
  return dx.astype(x.dtype), dk.astype(k.dtype)


shifted_depthwise = custom_backward(_shifted_plain, _shifted_fwd, _shifted_bwd)


DEPTHWISE = ("shifted", "xla", "auto")
REMAT = ("none", "blocks", "auto")


def remat_impl(kind: str) -> str:
  """The recomputation a model config's ``remat`` asks for: "none" or "blocks" as given; "auto" is
  "blocks" on the CPU backend (where it is also faster: less memory traffic, docs/performance.md)
  and "none" elsewhere (not measured there)."""
  return backend_impl("remat", kind, REMAT, on_cpu="blocks", elsewhere="none")


def set_remat(backbone: "Xception", kind: str) -> "Xception":
  """``kind="blocks"``: every block of ``backbone`` keeps only its input for the backward pass and
  recomputes the rest there (``autodiff.recompute_in_backward``); "none": autodiff keeps what it
  needs; "auto": ``remat_impl``. The same function, parameters and gradients (up to float
  rounding); in place, returns ``backbone``.

  LiSiam's plain training step at 299 px, batch 4 x 2 views, on XLA:CPU: 5.65 GiB of XLA
  temporaries and 8.16 s without it, 1.07 GiB and 6.93 s with it (docs/performance.md)."""
  on = remat_impl(kind) == "blocks"
  for _, block in backbone.blocks():
    block.remat = on
  return backbone


def depthwise_impl(kind: str) -> str:
  """The depthwise form a model config's ``depthwise`` asks for: "shifted" or "xla" as given;
  "auto" is "shifted" on the CPU backend (XLA:CPU's grouped convs are ~50x slower) and "xla"
  elsewhere (GPUs and TPUs have depthwise kernels of their own). With its own backward the
  shifted form takes the grouped conv's activation memory (LiSiam's backbone gradient at 299 px,
  2 images: 1.75 GB against 1.73 GB of temporaries; 3.9 GB when JAX differentiated the shifts)."""
  return backend_impl("depthwise", kind, DEPTHWISE, on_cpu="shifted")


def use_shifted_depthwise(backbone: "Xception") -> "Xception":
  """Swaps every separable conv's depthwise ``conv1`` for ``ShiftedDepthwise`` (same parameters and
  state paths), in place. A workaround for XLA:CPU's slow grouped convolutions."""
  for _, module in nnx.iter_modules(backbone):
    if isinstance(module, SeparableConv2d) and isinstance(module.conv1, nnx.Conv):
      conv = module.conv1
      if conv.kernel_size != (3, 3) or conv.strides not in (1, (1, 1)) or conv.use_bias:
        continue
      module.conv1 = ShiftedDepthwise(conv.kernel, backbone.config.compute_dtype)
  return backbone
