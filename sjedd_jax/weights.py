"""Reading the weight files people hold, safely: safetensors and PyTorch checkpoints.

Every backbone's loader (``backbones/<name>/params.py``) starts here:
``read_state_dict(path)`` returns ``{key: numpy array}`` with the keys as saved
(no renaming), from

* ``.safetensors`` files (bf16 is widened to float32);
* PyTorch ``.pt``/``.pth``/``.bin``/``.ckpt`` files, read with
  ``torch.load(..., weights_only=True)`` (no code in the file runs; torch is
  imported lazily, and only these files need it); a state dict wrapped in a
  dict under ``model``/``state_dict``/``model_state_dict``/``module``/``params``
  (training checkpoints) is unwrapped;
* OpenAI's TorchScript CLIP archives.

``CheckpointError`` is the one error type for a weight file that cannot be
used: unreadable, refused, or not fitting the model (every loader lists all
missing, unexpected and mis-shaped keys in one message).
"""

from __future__ import annotations

import argparse
import collections
import os
import zipfile
from typing import Any

import jax.numpy as jnp
import numpy as np

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
TORCH_PIN = "torch==2.13.0"

__all__ = ["CheckpointError", "read_state_dict", "read_safetensors", "strip_prefixes", "TORCH_SUFFIXES"]


class CheckpointError(ValueError):
  """A checkpoint that cannot be read or does not fit the model (missing/unexpected keys, shapes)."""


def _import_torch(path):
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        f"{path}: reading PyTorch checkpoints needs torch; `pip install {TORCH_PIN}` "
        "(or convert the file once on a machine with torch: "
        "python scripts/convert_checkpoint.py SRC OUT_DIR)") from e
  return torch


class _ReleaseConfigNode:
  """Stands in for ``yacs.config.CfgNode``, which the release pickles into its checkpoints.

  The weights-only unpickler fills only plain dict types, so the node is read
  back as an ``OrderedDict`` (its items; yacs' flags land in its ``__dict__``).
  No code from the file runs and yacs need not be installed.
  """

  def __new__(cls, *args, **kwargs):
    del args, kwargs
    return collections.OrderedDict()


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):  # torch.Tensor
    v = v.detach().cpu()
    if v.is_floating_point():
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def _torch_load(path: str) -> Any:
  torch = _import_torch(path)
  try:
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
    if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
      return torch.jit.load(path, map_location="cpu").state_dict()  # OpenAI's TorchScript CLIP
  except zipfile.BadZipFile:
    pass  # legacy (non-zip) torch.save format: torch.load copes
  allowed = [argparse.Namespace, (_ReleaseConfigNode, "yacs.config.CfgNode")]
  try:
    with torch.serialization.safe_globals(allowed):
      return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    text = str(e).strip()
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    detail = [l for l in lines if "Unsupported global" in l or l.startswith("Can only")
              or "WeightsUnpickler" in l]
    msg = (detail or lines or [type(e).__name__])[0]
    if "weights_only" in text or "Unsupported global" in text:
      raise CheckpointError(
          f"{path}: torch.load(weights_only=True) refused it ({msg}). If you trust the file, "
          "re-save only its tensors: torch.save(torch.load(p, weights_only=False)['model'], 'sd.pt')") from e
    raise CheckpointError(f"{path}: not a readable PyTorch checkpoint (corrupt or truncated? {msg})") from e


def _unwrap(obj: Any, path: str) -> dict[str, Any]:
  """The state dict inside a torch.save'd object (the release's {'model': ...} etc.)."""
  if hasattr(obj, "state_dict") and not isinstance(obj, dict):
    obj = obj.state_dict()
  if not isinstance(obj, dict):
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
  for key in ("model", "state_dict", "model_state_dict", "module", "params"):
    inner = obj.get(key)
    if isinstance(inner, dict) and inner and all(isinstance(k, str) for k in inner):
      if any(hasattr(v, "shape") for v in inner.values()):
        return inner
  return obj


def read_safetensors(path: str) -> dict[str, np.ndarray]:
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  out = {}
  try:
    try:
      with safe_open(path, framework="numpy") as f:
        for k in f.keys():
          out[k] = f.get_tensor(k)
    except TypeError:  # dtypes numpy lacks (bf16): go through jax
      with safe_open(path, framework="flax") as f:
        for k in f.keys():
          out[k] = np.asarray(f.get_tensor(k).astype(jnp.float32))
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from e
  return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """A checkpoint file -> {key: float32/int numpy array} (no key renaming)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no checkpoint at {path}")
  if path.endswith(".safetensors"):
    sd = read_safetensors(path)
  elif path.endswith(TORCH_SUFFIXES):
    sd = _unwrap(_torch_load(path), path)
  else:
    raise CheckpointError(f"{path}: unknown checkpoint file type; expected .safetensors or "
                          f"{'/'.join(TORCH_SUFFIXES)}, or a directory")
  out = {}
  for k, v in sd.items():
    if not isinstance(k, str):
      raise CheckpointError(f"{path}: state dict key {k!r} is not a string")
    if hasattr(v, "shape"):
      out[k] = _to_numpy(v)
  if not out:
    raise CheckpointError(f"{path}: no tensors found")
  return out




def strip_prefixes(sd: dict[str, Any], prefixes=("module.",)) -> dict[str, Any]:
  """Removes any of ``prefixes`` (DDP's ``module.``, a wrapper's ``model.``) from the start of every key."""
  out = {}
  for k, v in sd.items():
    changed = True
    while changed:
      changed = False
      for p in prefixes:
        if p and k.startswith(p):
          k, changed = k[len(p):], True
    out[k] = v
  return out
