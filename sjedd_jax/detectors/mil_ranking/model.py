"""The whole contrastive-MIL ranking network: a ResNet backbone and the MIL head (spec section 2).

``MILRanking(images, train, rng) -> {"fU", "fV", "f", "u"}``: the backbone's C3..C5
maps (``sjedd_jax.backbones.resnet``) go through ``modules.MILHead`` (FPN level,
l2-normalised tokens, encoder phi over [U; V], sorted similarity list u, patch
and class heads, fused logits f).

``build(model_config, seed)`` makes it from ``config.model`` (a ConfigDict or a
plain dict, as stored in an export); ``save``/``load`` write and read every
variable of the module (parameters, BatchNorm statistics, frozen stages) as one
safetensors file keyed by the NNX path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from sjedd_jax.backbones import layers, resnet
from sjedd_jax.detectors.mil_ranking import modules

_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}
WEIGHTS_FILE = "params.safetensors"


class ModelError(ValueError):
  """A model description (``config.model`` or an export's) that cannot be built or loaded."""


class MILRanking(nnx.Module):
  """ResNet -> MIL head. ``__call__(images (B, H, W, 3), train, rng) -> dict`` of float32 outputs."""

  def __init__(self, backbone: resnet.ResNetConfig, num_components: int, head: Mapping[str, Any], *,
               rngs: nnx.Rngs, pointwise: str = "auto", strided: str = "auto"):
    self.backbone = resnet.ResNet(backbone, rngs=rngs)
    ch = backbone.channels
    self.head = modules.MILHead({k: ch[k] for k in ("C3", "C4", "C5")}, num_components, rngs=rngs, **head)
    self.num_components = int(num_components)
    layers.set_pointwise(self, pointwise)  # 1x1 convs as matmuls on CPU: the same function
    layers.set_strided(self, strided)      # strided 3x3 convs' input gradient by phases on CPU: the same function

  def __call__(self, images: jax.Array, train: bool = False, rng: jax.Array | None = None) -> dict[str, jax.Array]:
    return self.head(self.backbone(images, train), train, rng)


def _get(m: Mapping[str, Any], key: str, default=None):
  return m[key] if key in m else default


def backbone_config(m: Mapping[str, Any]) -> resnet.ResNetConfig:
  """The ResNet of ``config.model``: ``backbone`` preset + ``backbone_overrides`` + the compute dtype."""
  overrides = dict(_get(m, "backbone_overrides", {}) or {})
  dtype = _get(m, "dtype", "float32")
  if dtype not in _DTYPES:
    raise ModelError(f"config.model.dtype={dtype!r}; expected one of {sorted(_DTYPES)}")
  overrides.setdefault("dtype", dtype)
  try:
    return resnet.get_config(m["backbone"], **overrides)
  except (KeyError, TypeError, ValueError) as e:
    raise ModelError(f"config.model.backbone={m['backbone']!r} / backbone_overrides={overrides}: {e}") from None


def head_kwargs(m: Mapping[str, Any]) -> dict[str, Any]:
  """``modules.MILHead`` keyword arguments of ``config.model``."""
  return dict(dim=int(m["dim"]), fpn_level=m["fpn_level"], num_layers=int(m["encoder_layers"]),
              num_heads=int(m["encoder_heads"]), ffn_dim=int(m["encoder_ffn"]), dropout=float(m["dropout"]),
              pos_encoding=m["pos_encoding"], pos_mode=m["pos_mode"], pos_scale=float(m["pos_scale"]),
              class_token_std=float(_get(m, "class_token_std", 0.02)),
              dtype=_DTYPES[_get(m, "dtype", "float32")])


def init_rngs(seed: int) -> nnx.Rngs:
  """The initialisation keys: JAX's "rbg" generator (XLA's RngBitGenerator).

  The same distributions as the default threefry keys, but every initialiser's draw
  compiles in a fraction of the time on XLA:CPU (threefry is compiled once per
  parameter shape): the tiny twin's module initialises in ~10 s instead of ~45 s on the
  shared 2-core machine. Deterministic for a seed on a given backend.
  """
  return nnx.Rngs(jax.random.key(int(seed), impl="rbg"))


def build(m: Mapping[str, Any], seed: int = 0) -> MILRanking:
  """A freshly initialised ``MILRanking`` of ``config.model`` (no pretrained weights)."""
  try:
    return MILRanking(backbone_config(m), int(m["num_components"]), head_kwargs(m), rngs=init_rngs(seed),
                      pointwise=_get(m, "pointwise", "auto"), strided=_get(m, "strided", "auto"))
  except (KeyError, TypeError) as e:
    raise ModelError(f"config.model: {type(e).__name__}: {e}") from None
  except ValueError as e:
    if isinstance(e, ModelError):
      raise
    raise ModelError(f"config.model: {e}") from None


def load_backbone(module: MILRanking, path: str) -> MILRanking:
  """Fills ``module.backbone`` from a torchvision/timm/SeqFakeFormer ResNet checkpoint (in place)."""
  resnet.load_pretrained(os.path.expanduser(path), module.backbone)
  return module


def trainable_filter(frozen_stages) -> Any:
  """The nnx filter of the trainable parameters: every ``nnx.Param`` outside the frozen backbone stages."""
  frozen = tuple(frozen_stages or ())
  if not frozen:
    return nnx.Param
  return nnx.All(nnx.Param, nnx.Not(resnet.frozen_filter(frozen, prefix=("backbone",))))


# ------------------------------------------------------------------ weights on disk
def _flat_state(module: nnx.Module) -> dict[str, Any]:
  return {"/".join(str(p) for p in path): var for path, var in nnx.to_flat_state(nnx.state(module))}


def save(module: MILRanking, path: str) -> None:
  """Every variable of ``module`` (parameters and statistics) as float32 safetensors keyed by path."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  arrays = {k: np.ascontiguousarray(np.asarray(jax.device_get(v.get_value()), np.float32))
            for k, v in _flat_state(module).items()}
  save_file(arrays, path)


def load(module: MILRanking, path: str) -> MILRanking:
  """Fills every variable of ``module`` from ``save``'s file; names every missing/extra/mis-shaped key."""
  from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no weights file")
  arrays = load_file(path)
  variables = _flat_state(module)
  missing = sorted(set(variables) - set(arrays))
  extra = sorted(set(arrays) - set(variables))
  bad = [f"{k}: file {arrays[k].shape} vs model {tuple(v.shape)}" for k, v in variables.items()
         if k in arrays and tuple(arrays[k].shape) != tuple(v.shape)]
  if missing or extra or bad:
    raise ModelError(f"{path} does not fit the model of its mil_ranking.json:"
                     + (f"\n  missing ({len(missing)}): {missing[:20]}" if missing else "")
                     + (f"\n  unexpected ({len(extra)}): {extra[:20]}" if extra else "")
                     + (f"\n  shape mismatch ({len(bad)}): {bad[:20]}" if bad else ""))
  for k, var in variables.items():
    var.set_value(jnp.asarray(arrays[k], jnp.float32))
  return module
