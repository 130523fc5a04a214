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
import io
import os
import zipfile
from typing import Any

import jax.numpy as jnp
import numpy as np

TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
TORCH_PIN = "torch==2.13.0"

__all__ = ["CheckpointError", "check_keys", "check_values", "read_state_dict", "to_numpy", "read_safetensors", "strip_prefixes",
           "TORCH_SUFFIXES"]


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


def to_numpy(v) -> np.ndarray:
  if hasattr(v, "detach"):  # torch.Tensor
    v = v.detach().cpu()
    if v.is_floating_point():
      v = v.float()
    return v.numpy()
  return np.asarray(v)


_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class _ScriptObject:
  """Stands for a TorchScript class instance in an archive: its attributes, nothing else (no code)."""

  def __setstate__(self, state):
    self.attrs = state if isinstance(state, dict) else {}


def _read_torchscript(path: str, z: zipfile.ZipFile) -> dict[str, np.ndarray]:
  """The tensors of a TorchScript archive (OpenAI's CLIP ``.pt``), read WITHOUT running its code.

  ``data.pkl`` is unpickled with a restricted unpickler that knows only tensors,
  storages, ordered dicts and stand-ins for the archive's own classes (which keep
  their attributes); the storages are read from the zip as raw little-endian
  arrays. The state dict is the tensor attributes, named by their attribute path.
  """
  import pickle  # pylint: disable=g-import-not-at-top
  names = z.namelist()
  data_pkl = next((n for n in names if n.endswith("/data.pkl") and n.count("/") == 1), None)
  if data_pkl is None:
    raise CheckpointError(f"{path}: a TorchScript archive without data.pkl")
  prefix = data_pkl[: -len("data.pkl")]
  byteorder = z.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
  if byteorder != "little":
    raise CheckpointError(f"{path}: a big-endian TorchScript archive is not supported")

  def rebuild(storage, offset, size, stride, *unused):
    del unused
    flat = storage[offset:]
    if not size:
      return np.array(flat[0]) if flat.size else np.zeros((), storage.dtype)
    strides = [s * flat.itemsize for s in stride]
    return np.lib.stride_tricks.as_strided(flat, shape=tuple(size), strides=strides).copy()

  class Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
      if module.startswith("__torch__"):
        return type(name, (_ScriptObject,), {})
      if (module, name) in (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor")):
        return rebuild
      if (module, name) == ("collections", "OrderedDict"):
        return collections.OrderedDict
      if module == "torch" and name in _STORAGE_DTYPES:
        return name
      raise CheckpointError(f"{path}: the TorchScript archive refers to {module}.{name}, which this reader does not "
                            "load (it runs no code from the file); convert the file on a trusted machine with "
                            "scripts/convert_checkpoint.py")

    def persistent_load(self, pid):
      _, stype, key, _, numel = pid
      dtype = _STORAGE_DTYPES[stype if isinstance(stype, str) else str(stype)]
      raw = z.read(f"{prefix}data/{key}")
      if dtype == "bfloat16":
        bits = np.frombuffer(raw, np.uint16)[:numel].astype(np.uint32) << 16
        return bits.view(np.float32)
      return np.frombuffer(raw, dtype)[:numel]

  try:
    root = Unpickler(io.BytesIO(z.read(data_pkl))).load()
  except CheckpointError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise CheckpointError(f"{path}: not a readable TorchScript archive ({type(e).__name__}: {e})") from None
  out: dict[str, np.ndarray] = {}

  def walk(obj, name):
    for k, v in getattr(obj, "attrs", {}).items():
      key = f"{name}.{k}" if name else str(k)
      if isinstance(v, np.ndarray):
        out[key] = v.astype(np.float32) if v.dtype == np.float16 else v
      elif isinstance(v, _ScriptObject):
        walk(v, key)

  walk(root, "")
  return out


def _torch_load(path: str) -> Any:
  try:
    with zipfile.ZipFile(path) as z:
      names = z.namelist()
      if any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names):
        return _read_torchscript(path, z)  # OpenAI's TorchScript CLIP: weights only, no code run
  except zipfile.BadZipFile:
    pass  # legacy (non-zip) torch.save format: torch.load copes
  with open(path, "rb") as f:
    head = f.read(4)
  if not head.startswith(b"PK") and not head.startswith(b"\x80"):
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (or corrupt): it is neither a zip archive nor a "
                          "pickle")
  torch = _import_torch(path)
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
    if "Unsupported global" in text or "Unsupported operand" in text:
      raise CheckpointError(
          f"{path}: the file holds Python objects beyond tensors ({msg}); the safe loader "
          "(torch.load(weights_only=True)) refuses to run code from a checkpoint. Convert it on a machine where "
          "you trust the file: torch.save(torch.load(p, weights_only=False)['model'], 'weights.pt')") from e
    raise CheckpointError(f"{path}: not a PyTorch checkpoint (or corrupt): {msg}") from e


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
      out[k] = to_numpy(v)
  if not out:
    raise CheckpointError(f"{path}: no tensors found")
  return out




def check_keys(shapes, arrays, where: str = "checkpoint", what: str = "the model") -> None:
  """Refuses a state dict that does not fit a model: one ``CheckpointError`` listing every missing,
  unexpected and mis-shaped key. ``shapes``: {key: shape the model expects}; ``arrays``: {key: array}."""
  missing = sorted(set(shapes) - set(arrays))
  unexpected = sorted(set(arrays) - set(shapes))
  bad = sorted(f"{k}: checkpoint {tuple(np.shape(arrays[k]))} vs model {tuple(shapes[k])}"
               for k in set(arrays) & set(shapes) if tuple(np.shape(arrays[k])) != tuple(shapes[k]))
  if missing or unexpected or bad:
    raise CheckpointError(
        f"{where} does not match {what}:"
        + (f"\n  missing ({len(missing)}): {missing}" if missing else "")
        + (f"\n  unexpected ({len(unexpected)}): {unexpected}" if unexpected else "")
        + (f"\n  shape mismatch ({len(bad)}): {bad}" if bad else ""))


def check_values(arrays, where: str = "checkpoint", limit: int = 10) -> None:
  """Refuses weights a model must not be given: non-floating-point tensors (uint8, bool, int,
  complex; a cast would silently change them) and non-finite values (NaN, inf), naming the keys."""
  wrong, nonfinite = [], []
  for k, v in arrays.items():
    a = np.asarray(v)
    if not np.issubdtype(a.dtype, np.floating):
      wrong.append(f"{k} ({a.dtype})")
    elif not np.isfinite(a).all():
      nonfinite.append(f"{k} ({int((~np.isfinite(a)).sum())} of {a.size} values)")
  parts = []
  for what, keys in (("are not floating-point weights", wrong), ("hold NaN or inf", nonfinite)):
    if keys:
      more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
      parts.append(f"{len(keys)} tensor(s) {what}: {', '.join(keys[:limit])}{more}")
  if parts:
    raise CheckpointError(f"{where}: refused: " + "; ".join(parts))


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
