"""Xception checkpoint key map: timm / Cadene / LiSiam state dicts <-> the NNX ``Xception``.

State dicts people hold (none is downloaded here):

* timm ``legacy_xception`` (``model.safetensors`` / ``pytorch_model.bin``) and the old
  timm file ``xception-43020ad28.pth``: pointwise kernels 4-D (out, in, 1, 1);
* Cadene's ``xception-b5690688.pth`` (also FF++'s and LiSiam's starting point):
  pointwise kernels 2-D (out, in), classifier ``fc`` (``last_linear`` once loaded);
* LiSiam release checkpoints: the backbone under ``backbone_net.`` (only those keys are
  read; the heads are LiSiam's, not the backbone's); DDP's ``module.`` is stripped.

The torch names are the NNX state paths with the leaf renamed: conv ``weight`` ->
``kernel`` (OIHW -> HWIO; depthwise (C, 1, 3, 3) -> (3, 3, 1, C); pointwise (O, I) or
(O, I, 1, 1) -> (1, 1, I, O)), BN ``weight``/``bias``/``running_mean``/``running_var``
-> ``scale``/``bias``/``mean``/``var``. ``num_batches_tracked``, ``fc.*``,
``last_linear.*`` are dropped, and ``conv3``/``bn3``/``conv4``/``bn4`` too when the
model stops at block12. Anything else that does not fit raises one ``CheckpointError``
listing every missing, unexpected and mis-shaped key.

Example::

  model = load_pretrained("xception-b5690688.pth",
                          get_config("xception", block_strides={"block3": 1, "block12": 1}))
  sd = to_state_dict(model)          # timm names, 4-D pointwise; loads into timm (strict=False: no fc)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sjedd_jax.backbones.xception.modeling import Xception, XceptionConfig, get_config
from sjedd_jax.weights import CheckpointError, check_keys, check_values, read_state_dict, strip_prefixes, to_numpy

__all__ = ["CheckpointError", "assign", "flatten", "key_table", "load_pretrained", "normalise_state_dict",
           "to_state_dict", "torch_to_nnx"]

_LEAF_TO_TORCH = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
                  "var": "running_var"}
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$|^(fc|last_linear)\.")
_HEAD = re.compile(r"^(conv3|bn3|conv4|bn4)\.")
_LISIAM_PREFIX = "backbone_net."


def _path_str(path) -> str:
  return ".".join(str(p) for p in path)


def _variables(model: Xception) -> dict[str, Any]:
  """{"block1.rep.0.conv1.kernel": Variable, ...}: parameters and BN statistics."""
  state = nnx.state(model, (nnx.Param, nnx.BatchStat))
  return {_path_str(path): var for path, var in nnx.to_flat_state(state)}


def torch_key(path: str) -> str:
  """NNX state path -> torch state-dict key ("block2.rep.2.mean" -> "block2.rep.2.running_mean")."""
  prefix, leaf = path.rsplit(".", 1)
  return f"{prefix}.{_LEAF_TO_TORCH[leaf]}"


def _torch_shape(path: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of an NNX variable (HWIO kernels -> OIHW)."""
  if path.endswith("kernel"):
    h, w, i, o = shape
    return (o, i, h, w)
  return tuple(shape)


def key_table(cfg: XceptionConfig) -> list[tuple[str, str, tuple[int, ...]]]:
  """(torch key, NNX path, NNX shape) of every parameter and BN statistic of a model ``cfg``."""
  model = nnx.eval_shape(lambda: Xception(cfg, rngs=nnx.Rngs(0)))
  return [(torch_key(p), p, tuple(var.shape)) for p, var in _variables(model).items()]


def normalise_state_dict(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Strips DDP's ``module.``; keeps only the ``backbone_net.*`` keys (stripped) of a LiSiam
  checkpoint; values become numpy arrays."""
  sd = strip_prefixes(dict(sd), ("module.",))
  if any(k.startswith(_LISIAM_PREFIX) for k in sd):
    sd = {k[len(_LISIAM_PREFIX):]: v for k, v in sd.items() if k.startswith(_LISIAM_PREFIX)}
  return {k: to_numpy(v) for k, v in sd.items()}


def _to_nnx(v: np.ndarray, path: str) -> np.ndarray:
  if path.endswith("kernel"):
    if v.ndim == 2 and path.endswith("pointwise.kernel"):  # Cadene's 2-D pointwise (out, in)
      v = v[:, :, None, None]
    if v.ndim == 4:
      return v.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return v


def torch_to_nnx(sd: Mapping[str, Any], cfg: XceptionConfig, where: str = "state dict") -> dict[str, np.ndarray]:
  """A timm/Cadene-named state dict (already normalised) -> {NNX path: float32 array}.

  Raises ``CheckpointError`` listing every missing, unexpected and mis-shaped key.
  """
  table = key_table(cfg)
  expected = {t: (p, s) for t, p, s in table}

  def ignored(k: str) -> bool:
    return bool(_IGNORED.search(k)) or (cfg.upto == "block12" and bool(_HEAD.match(k)))

  missing = sorted(set(expected) - set(sd))
  unexpected = sorted(k for k in sd if k not in expected and not ignored(k))
  out, bad = {}, []
  for t, (p, shape) in expected.items():
    if t not in sd:
      continue
    v = _to_nnx(np.asarray(sd[t]), p)
    if tuple(v.shape) != shape:
      bad.append(f"{t}: checkpoint {tuple(np.shape(sd[t]))} vs model {_torch_shape(p, shape)}")
    else:
      out[p] = np.asarray(v, np.float32)
  if missing or unexpected or bad:
    n = cfg.num_blocks
    raise CheckpointError(
        f"{where} does not match the Xception model ({n} blocks, up to {cfg.upto}):"
        + (f"\n  missing ({len(missing)}): {missing}" if missing else "")
        + (f"\n  unexpected ({len(unexpected)}): {unexpected}" if unexpected else "")
        + (f"\n  shape mismatch ({len(bad)}): {sorted(bad)}" if bad else ""))
  return out


def flatten(model: Xception) -> dict[str, np.ndarray]:
  """The model's parameters and BN statistics as {"conv1.kernel": array, ...}."""
  return {k: np.asarray(var.get_value()) for k, var in _variables(model).items()}


def assign(model: Xception, flat: Mapping[str, Any], where: str = "checkpoint") -> Xception:
  """Writes {NNX path: array} (parameters and BN statistics) into ``model`` in place;
  checks every name and shape first."""
  variables = _variables(model)
  shapes = {k: tuple(var.shape) for k, var in variables.items()}
  check_keys(shapes, flat, where, "the Xception model")
  check_values({k: flat[k] for k in shapes}, where)
  for k, var in variables.items():
    var.set_value(jnp.asarray(flat[k], jnp.float32))
  return model


def to_state_dict(model: Xception, pointwise_2d: bool = False) -> dict[str, np.ndarray]:
  """The model as a timm-named torch state dict of numpy arrays (OIHW kernels).

  ``pointwise_2d=True`` writes pointwise kernels as Cadene's 2-D (out, in). No
  ``num_batches_tracked`` (torch fills it in on load) and no classifier.
  """
  out = {}
  for p, v in flatten(model).items():
    if p.endswith("kernel"):
      v = v.transpose(3, 2, 0, 1)  # HWIO -> OIHW
      if pointwise_2d and p.endswith("pointwise.kernel"):
        v = v[:, :, 0, 0]
    out[torch_key(p)] = np.ascontiguousarray(v)
  return out


def load_pretrained(source: str | os.PathLike | Mapping[str, Any],
                    model_or_config: Xception | XceptionConfig | str = "xception") -> Xception:
  """Loads a timm / Cadene / LiSiam Xception state dict (a file or a dict) into a model.

  Args:
    source: a ``.pth``/``.pt``/``.bin``/``.safetensors`` path (read safely by
      ``weights.read_state_dict``) or a state dict ({key: torch tensor or array}).
    model_or_config: a model to fill in place, or a config / preset name to build one
      (its strides and ``upto`` are the caller's choice: the file does not state them).

  Returns:
    The model with the checkpoint's parameters and BN running statistics.
  Raises:
    FileNotFoundError: no file at ``source``.
    CheckpointError: unreadable, or keys/shapes that do not fit (all listed).
  """
  if isinstance(source, (str, os.PathLike)):
    where = os.fspath(source)
    sd = read_state_dict(source)
  elif isinstance(source, Mapping):
    where, sd = "state dict", source
  else:
    raise TypeError(f"load_pretrained: source must be a path or a state dict, got {type(source).__name__}")
  if isinstance(model_or_config, Xception):
    model = model_or_config
  else:
    cfg = get_config(model_or_config) if isinstance(model_or_config, str) else model_or_config
    model = None
  cfg = model.config if model is not None else cfg
  flat = torch_to_nnx(normalise_state_dict(sd), cfg, where)
  if model is None:  # no random init: every variable is overwritten
    model = nnx.eval_shape(lambda: Xception(cfg, rngs=nnx.Rngs(0)))
  return assign(model, flat, where)
