"""Checkpoint key map for ResNet: torchvision/timm state dicts <-> NNX ``ResNet``.

torchvision's ``resnet*`` and timm's ``resnet*`` (same layout and names) map
one to one onto ``sjedd_jax.backbones.resnet.modeling.ResNet``:

  ===============================================  =========================================
  torch key                                         NNX path (variable)
  ===============================================  =========================================
  ``conv1.weight`` (OIHW)                           ``conv1.kernel`` (HWIO, Param)
  ``bn1.weight`` / ``bn1.bias``                     ``bn1.scale`` / ``bn1.bias`` (Param)
  ``bn1.running_mean`` / ``bn1.running_var``        ``bn1.mean`` / ``bn1.var`` (BatchStat)
  ``layerX.Y.convZ.weight``, ``layerX.Y.bnZ.*``     ``layerX.Y.convZ.kernel``, ``layerX.Y.bnZ.*``
  ``layerX.0.downsample.0.weight``                  ``layerX.0.downsample.0.kernel``
  ``layerX.0.downsample.1.*``                       ``layerX.0.downsample.1.*``
  ===============================================  =========================================

Before mapping, a state dict is normalised (``normalise_state_dict``): DDP's
``module.`` is stripped; a SeqFakeFormer/DETR detector checkpoint (keys
``backbone.0.body.*`` next to its transformer's) is reduced to its backbone's
keys; ``fc.*`` (the classifier) and ``*.num_batches_tracked`` are dropped. Every
mismatch (missing, unexpected and mis-shaped keys, by torch name) is reported
in one ``CheckpointError``.

Example::

  model = params.load_pretrained("resnet34-b627a593.pth")            # config read off the shapes
  model = params.load_pretrained(sd, "resnet50", replace_stride_with_dilation=(False, False, True))
  sd = params.to_state_dict(model)   # torch names; torchvision's load_state_dict(sd, strict=False)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sjedd_jax.backbones.resnet.modeling import ResNet, ResNetConfig, get_config
from sjedd_jax.weights import CheckpointError, check_values, read_state_dict, strip_prefixes, to_numpy

# The prefix SeqFakeFormer (DETR's Backbone in a Joiner) puts before its ResNet's keys.
DETR_BODY_PREFIX = "backbone.0.body."
_DROPPED = re.compile(r"^(fc\..*|.*num_batches_tracked)$")

# torch leaf -> (NNX leaf, kind); kind "conv" is an OIHW <-> HWIO transpose, "stat" a BatchStat.
_CONV = {"weight": ("kernel", "conv")}
_BN = {"weight": ("scale", "param"), "bias": ("bias", "param"),
       "running_mean": ("mean", "stat"), "running_var": ("var", "stat")}


def _module_names(cfg: ResNetConfig) -> list[tuple[str, dict]]:
  """(torch module name, leaf map) of every conv and BatchNorm of a model with config ``cfg``."""
  names = [("conv1", _CONV), ("bn1", _BN)]
  n_convs = 2 if cfg.block == "basic" else 3
  for stage, ((stride, _, _), n) in enumerate(zip(cfg.stage_geometry(), cfg.layers)):
    cin = cfg.stem_width if stage == 0 else cfg.widths[stage - 1] * cfg.expansion
    for j in range(n):
      prefix = f"layer{stage + 1}.{j}."
      for z in range(1, n_convs + 1):
        names += [(f"{prefix}conv{z}", _CONV), (f"{prefix}bn{z}", _BN)]
      if j == 0 and (stride != 1 or cin != cfg.widths[stage] * cfg.expansion):
        names += [(f"{prefix}downsample.0", _CONV), (f"{prefix}downsample.1", _BN)]
  return names


def key_table(cfg: ResNetConfig) -> list[tuple[str, str, str]]:
  """All (torch key, NNX path, kind) triples of a model with config ``cfg``; kind in
  {"conv", "param", "stat"}."""
  return [(f"{module}.{leaf}", f"{module}.{nnx_leaf}", kind)
          for module, leaves in _module_names(cfg) for leaf, (nnx_leaf, kind) in leaves.items()]


def normalise_state_dict(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """torchvision/timm/SeqFakeFormer/DDP state dict -> {torch ResNet key: numpy array}.

  Strips ``module.``; keeps only the ``backbone.0.body.*`` keys (stripped) when any
  exists (a SeqFakeFormer checkpoint holds its whole detector); drops ``fc.*`` and
  ``num_batches_tracked``. Values may be numpy arrays or torch tensors.
  """
  sd = strip_prefixes(dict(sd), ("module.",))
  if any(k.startswith(DETR_BODY_PREFIX) for k in sd):
    sd = {k: v for k, v in sd.items() if k.startswith(DETR_BODY_PREFIX)}
    sd = strip_prefixes(sd, (DETR_BODY_PREFIX,))
  return {k: to_numpy(v) for k, v in sd.items() if not _DROPPED.match(k)}


def _count(keys, pattern: str) -> int:
  pat = re.compile(pattern)
  idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
  if idx and idx != set(range(len(idx))):
    raise CheckpointError(f"block indices matching {pattern!r} are not contiguous: {sorted(idx)}")
  return len(idx)


def config_from_state_dict(sd: Mapping[str, Any], **overrides) -> ResNetConfig:
  """A ``ResNetConfig`` read off the shapes of a (normalised) torch ResNet state dict.

  Block type, blocks per stage, widths, stem kind and width come from the tensors;
  strides, ``replace_stride_with_dilation`` and ``dtype`` are not in a state dict
  and come from ``overrides`` (defaults: torchvision's).
  """
  need = ["conv1.weight"] + [f"layer{i}.0.conv1.weight" for i in range(1, 5)]
  missing = [k for k in need if k not in sd]
  if missing:
    raise CheckpointError(f"not a torchvision/timm ResNet state dict: missing {missing} "
                          f"(first keys: {sorted(sd)[:8]})")
  shape = lambda k: tuple(np.shape(sd[k]))
  stem_width, in_channels, kh, kw = shape("conv1.weight")
  if (kh, kw) not in ((7, 7), (3, 3)):
    raise CheckpointError(f"conv1.weight is {kh}x{kw}: only the 7x7 (torchvision) and 3x3 (tiny) stems "
                          "are supported (deep stems such as timm's resnet50d are not)")
  block = "bottleneck" if "layer1.0.conv3.weight" in sd else "basic"
  cfg = dict(
      block=block,
      layers=tuple(_count(sd, rf"^layer{i}\.(\d+)\.") for i in range(1, 5)),
      widths=tuple(shape(f"layer{i}.0.conv1.weight")[0] for i in range(1, 5)),
      stem="torchvision" if kh == 7 else "tiny",
      stem_width=stem_width,
      in_channels=in_channels,
  )
  cfg.update(overrides)
  try:
    return ResNetConfig(**cfg)
  except (TypeError, ValueError) as e:
    raise CheckpointError(f"the state dict's shapes do not make a valid ResNet: {e}") from e


def _path_str(path) -> str:
  return ".".join(str(p) for p in path)


def _variables(model: ResNet) -> dict[str, nnx.Variable]:
  state = nnx.state(model, nnx.Any(nnx.Param, nnx.BatchStat))
  return {_path_str(path): var for path, var in nnx.to_flat_state(state)}


def _torch_shape(shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
  return (shape[3], shape[2], shape[0], shape[1]) if kind == "conv" and len(shape) == 4 else shape


def assign(model: ResNet, sd: Mapping[str, Any], where: str = "state dict") -> ResNet:
  """Writes a torch-named state dict (any prefix/extra keys ``normalise_state_dict``
  handles) into ``model`` in place: parameters and BatchNorm running statistics.

  Raises ``CheckpointError`` naming every missing, unexpected and mis-shaped key.
  """
  sd = normalise_state_dict(sd)
  variables = _variables(model)
  table = key_table(model.config)
  expected = {t for t, _, _ in table}
  missing = sorted(expected - set(sd))
  unexpected = sorted(set(sd) - expected)
  bad = []
  for t, p, kind in table:
    if t in sd:
      want = _torch_shape(tuple(variables[p].shape), kind)
      if tuple(np.shape(sd[t])) != want:
        bad.append(f"{t}: checkpoint {tuple(np.shape(sd[t]))} vs model {want}")
  if missing or unexpected or bad:
    cfg = model.config
    raise CheckpointError(
        f"{where} does not fit the ResNet ({cfg.block}, layers {cfg.layers}, widths {cfg.widths}):"
        + (f"\n  missing ({len(missing)}): {missing}" if missing else "")
        + (f"\n  unexpected ({len(unexpected)}): {unexpected}" if unexpected else "")
        + (f"\n  shape mismatch ({len(bad)}): {bad}" if bad else ""))
  check_values({t: sd[t] for t, _, _ in table}, where)
  for t, p, kind in table:
    value = np.asarray(sd[t], np.float32)
    if kind == "conv":
      value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    variables[p].set_value(jnp.asarray(value, jnp.float32))
  return model


def to_state_dict(model: ResNet, num_batches_tracked: bool = False) -> dict[str, np.ndarray]:
  """The model as a torchvision-named state dict (no ``fc``): OIHW convs, BatchNorm
  weight/bias/running_mean/running_var. Loads into torchvision's ResNet with
  ``strict=False`` (only ``fc.*`` is missing). ``num_batches_tracked`` adds those
  int64 zeros too (torch's BatchNorm fills them in when absent)."""
  variables = _variables(model)
  out = {}
  for t, p, kind in key_table(model.config):
    value = np.asarray(variables[p].get_value(), np.float32)
    if kind == "conv":
      value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    out[t] = np.ascontiguousarray(value)
    if num_batches_tracked and t.endswith(".running_var"):
      out[t[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
  return out


def load_pretrained(source: str | os.PathLike | Mapping[str, Any],
                    model_or_config: ResNet | ResNetConfig | str | None = None,
                    **overrides) -> ResNet:
  """A ResNet with the weights of a torchvision/timm/SeqFakeFormer checkpoint.

  Args:
    source: a ``.pth``/``.pt``/``.bin``/``.ckpt`` file (read with
      ``torch.load(weights_only=True)``), a ``.safetensors`` file, or an in-memory
      state dict (numpy arrays or torch tensors).
    model_or_config: a ``ResNet`` to fill in place; a ``ResNetConfig`` or preset name
      to build; None to read the architecture off the tensor shapes.
    **overrides: config fields that are not in a state dict (``strides``,
      ``replace_stride_with_dilation``, ``dtype``, ...); not allowed with a model.
  Raises:
    CheckpointError: unreadable file, or keys/shapes that do not fit (all listed).
  """
  if isinstance(source, (str, os.PathLike)):
    where = os.fspath(source)
    sd = read_state_dict(source)
  else:
    where, sd = "state dict", source
  if isinstance(model_or_config, ResNet):
    if overrides:
      raise ValueError(f"load_pretrained: overrides {sorted(overrides)} need a config, not a built model")
    return assign(model_or_config, sd, where)
  if model_or_config is None:
    try:
      cfg = config_from_state_dict(normalise_state_dict(sd), **overrides)
    except CheckpointError as e:
      raise CheckpointError(f"{where}: {e}") from e
  elif isinstance(model_or_config, str):
    cfg = get_config(model_or_config, **overrides)
  elif isinstance(model_or_config, ResNetConfig):
    cfg = model_or_config.replace(**overrides) if overrides else model_or_config
  else:
    raise TypeError(f"load_pretrained: model_or_config must be a ResNet, ResNetConfig, preset name or None, "
                    f"got {type(model_or_config).__name__}")
  model = nnx.eval_shape(lambda: ResNet(cfg, rngs=nnx.Rngs(0)))
  return assign(model, sd, where)


__all__ = ["CheckpointError", "DETR_BODY_PREFIX", "assign", "config_from_state_dict", "key_table",
           "load_pretrained", "normalise_state_dict", "to_state_dict"]
