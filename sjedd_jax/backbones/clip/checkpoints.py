"""Loading CLIP checkpoints of every kind into the NNX ``CLIP`` (and saving our own).

``load_pretrained(path)`` accepts:

* a Hugging Face CLIP directory: ``config.json`` + ``model.safetensors`` (or a
  sharded ``model.safetensors.index.json``, or ``pytorch_model.bin``), with or
  without tokenizer files;
* an OpenAI-format state dict (``visual.conv1.weight``, ...,
  ``visual.transformer.resblocks.0.attn.in_proj_weight``, ``token_embedding.weight``,
  ``text_projection``) as ``.safetensors`` or PyTorch ``.pt``/``.pth``; OpenAI's
  TorchScript archives (the original ``ViT-B-32.pt``) too;
* the SJEDD release's checkpoints: ``torch.save`` of a dict whose ``'model'``
  entry is such a state dict (prefixes such as ``module.`` are stripped);
* the project's own format, written by ``save_pretrained`` /
  ``scripts/convert_checkpoint.py``: a directory with ``sjedd_clip.json`` and
  ``params.safetensors`` (NNX parameter paths), which needs no torch.

Shapes come from the weights. ``.pt``/``.pth`` files need torch (imported lazily)
and are read with ``torch.load(..., weights_only=True)``.

Example::

  model, tokenizer = load_pretrained("clip-vit-base-patch32/")   # tokenizer or None
  model, _ = load_pretrained("ckpt_epoch_19.pth", dtype="bfloat16")
  save_pretrained(model, "converted/", tokenizer=tokenizer)
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, NamedTuple

import numpy as np
from flax import nnx

from sjedd_jax.backbones.clip import params as params_lib
from sjedd_jax.backbones.clip.modeling import CLIP, CLIPConfig
from sjedd_jax.backbones.clip.tokenizer import ClipTokenizer
from sjedd_jax.weights import CheckpointError, read_safetensors, read_state_dict

OWN_CONFIG = "sjedd_clip.json"
OWN_PARAMS = "params.safetensors"
OWN_ORBAX = "orbax"
FORMAT_NAME = "sjedd_jax.clip"

__all__ = ["CheckpointError", "Pretrained", "load_pretrained", "save_pretrained",
           "read_state_dict", "load_state_dict_model"]


class Pretrained(NamedTuple):
  """What ``load_pretrained`` returns; unpacks as ``model, tokenizer``."""
  model: CLIP
  tokenizer: ClipTokenizer | None


def _read_hf_dir(path: str) -> dict[str, np.ndarray]:
  single = os.path.join(path, "model.safetensors")
  index = os.path.join(path, "model.safetensors.index.json")
  if os.path.exists(single):
    return read_safetensors(single)
  if os.path.exists(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    sd = {}
    for s in shards:
      sd.update(read_safetensors(os.path.join(path, s)))
    return sd
  for name in ("pytorch_model.bin", "model.pt", "model.pth"):
    if os.path.exists(os.path.join(path, name)):
      return read_state_dict(os.path.join(path, name))
  raise CheckpointError(f"{path}: HF CLIP directory without weights (model.safetensors, "
                        "model.safetensors.index.json or pytorch_model.bin)")


def _hf_overrides(path: str) -> dict[str, Any]:
  """Head counts, activation and eps from an HF ``config.json`` (shapes come from the weights)."""
  cfg_path = os.path.join(path, "config.json")
  try:
    with open(cfg_path) as f:
      cfg = json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{cfg_path}: unreadable ({e})") from e
  if cfg.get("model_type") not in (None, "clip"):
    raise CheckpointError(f"{cfg_path}: model_type {cfg.get('model_type')!r} is not 'clip'")
  tc, vc = cfg.get("text_config") or {}, cfg.get("vision_config") or {}
  acts = {tc.get("hidden_act", "quick_gelu"), vc.get("hidden_act", "quick_gelu")}
  if len(acts) != 1 or next(iter(acts)) not in ("quick_gelu", "gelu"):
    raise CheckpointError(f"{cfg_path}: hidden_act {sorted(acts)} unsupported (quick_gelu or gelu, "
                          "the same in both towers)")
  eps = {tc.get("layer_norm_eps", 1e-5), vc.get("layer_norm_eps", 1e-5)}
  if len(eps) != 1:
    raise CheckpointError(f"{cfg_path}: different layer_norm_eps per tower {sorted(eps)}")
  return dict(vision_heads=vc.get("num_attention_heads"), text_heads=tc.get("num_attention_heads"),
              act=next(iter(acts)), layer_norm_eps=float(next(iter(eps))))


# ----------------------------------------------------------------- building
def _abstract_model(cfg: CLIPConfig) -> CLIP:
  """A CLIP whose parameters are not initialised (filled by ``params.assign``)."""
  return nnx.eval_shape(lambda: CLIP(cfg, rngs=nnx.Rngs(0)))


def load_state_dict_model(sd: dict[str, Any], *, where: str = "state dict",
                          **overrides) -> CLIP:
  """A CLIP from an in-memory state dict of any supported format (HF, OpenAI, NNX flat)."""
  try:
    sd, fmt = params_lib.normalise_state_dict(sd)
    if fmt == "nnx":
      raise CheckpointError("an NNX-format state dict needs its sjedd_clip.json config; "
                            "load the directory written by save_pretrained")
    cfg = params_lib.config_from_openai(sd, **overrides)
    flat = params_lib.openai_to_nnx(sd, cfg)
    return params_lib.assign(_abstract_model(cfg), flat, where)
  except CheckpointError as e:
    if str(e).startswith(where):
      raise
    raise CheckpointError(f"{where}: {e}") from e


def _load_own(path: str, overrides: dict[str, Any]) -> CLIP:
  cfg_path = os.path.join(path, OWN_CONFIG)
  try:
    with open(cfg_path) as f:
      meta = json.load(f)
    cfg = CLIPConfig.from_dict(meta["clip"])
  except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
    raise CheckpointError(f"{cfg_path}: not a valid {FORMAT_NAME} config ({e})") from e
  cfg = cfg.replace(**{k: v for k, v in overrides.items() if v is not None})
  model = _abstract_model(cfg)
  params_file = os.path.join(path, OWN_PARAMS)
  if os.path.exists(params_file):
    flat = read_safetensors(params_file)
  elif os.path.isdir(os.path.join(path, OWN_ORBAX)):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    shapes = params_lib.flatten_shapes(model)
    target = params_lib.nest({k: np.zeros(v, np.float32) for k, v in shapes.items()})
    restored = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(path, OWN_ORBAX)), target)
    flat = {k: np.asarray(v) for k, v in params_lib.unnest(restored).items()}
    params_file = os.path.join(path, OWN_ORBAX)
  else:
    raise CheckpointError(f"{path}: has {OWN_CONFIG} but neither {OWN_PARAMS} nor {OWN_ORBAX}/")
  return params_lib.assign(model, flat, params_file)


def load_pretrained(path: str | os.PathLike, *, dtype: str | None = None,
                    vision_heads: int | None = None, text_heads: int | None = None,
                    attention_impl: str | None = None, scan_layers: bool | None = None) -> Pretrained:
  """Loads a CLIP checkpoint of any supported kind; returns ``(model, tokenizer)``.

  Args:
    path: a file (.safetensors, .pt, .pth, .bin) or a directory (HF or our own format).
    dtype: compute dtype override ("float32", "bfloat16"); parameters stay float32.
    vision_heads, text_heads: head counts for OpenAI-format dicts whose widths are
      not multiples of 64 (OpenAI's rule is width // 64). HF configs carry their own.
    attention_impl: "cudnn" to use cuDNN attention on NVIDIA GPUs (bf16).
    scan_layers: run the residual blocks as one ``lax.scan`` (True) or unrolled (False);
      None keeps ``CLIPConfig``'s default (our own format: the saved value).

  Returns:
    ``Pretrained(model, tokenizer)``; ``tokenizer`` is a ``ClipTokenizer`` when the
    directory has tokenizer files, else None.
  """
  path = os.fspath(path)
  overrides = dict(dtype=dtype, vision_heads=vision_heads, text_heads=text_heads,
                   attention_impl=attention_impl, scan_layers=scan_layers)
  tokenizer = None
  if os.path.isdir(path):
    if os.path.exists(os.path.join(path, OWN_CONFIG)):
      model = _load_own(path, overrides)
    elif os.path.exists(os.path.join(path, "config.json")):
      hf = _hf_overrides(path)
      hf.update({k: v for k, v in overrides.items() if v is not None})
      model = load_state_dict_model(_read_hf_dir(path), where=path, **hf)
    else:
      raise CheckpointError(f"{path}: a directory without {OWN_CONFIG} (sjedd_jax format) or "
                            "config.json (Hugging Face format)")
    if ClipTokenizer.has_files(path):
      tokenizer = ClipTokenizer.from_pretrained(path)
  else:
    model = load_state_dict_model(read_state_dict(path), where=path, **overrides)
  return Pretrained(model, tokenizer)


# ------------------------------------------------------------------ saving
def save_pretrained(model: CLIP, out_dir: str | os.PathLike, *, tokenizer: ClipTokenizer | None = None,
                    orbax: bool = False, source: str | None = None) -> str:
  """Writes ``model`` in the project's own format (loadable by ``load_pretrained``, no torch).

  ``out_dir/sjedd_clip.json`` (config) and ``out_dir/params.safetensors`` (NNX
  parameter paths); with ``orbax=True`` also an orbax checkpoint in ``out_dir/orbax``.
  Tokenizer files are saved alongside when a tokenizer is given.
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  out_dir = os.fspath(out_dir)
  os.makedirs(out_dir, exist_ok=True)
  flat = params_lib.flatten(model)
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()},
            os.path.join(out_dir, OWN_PARAMS))
  meta = {"format": FORMAT_NAME, "version": 1, "clip": model.config.to_dict()}
  if source:
    meta["source"] = source
  with open(os.path.join(out_dir, OWN_CONFIG), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
  if orbax:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    target = os.path.abspath(os.path.join(out_dir, OWN_ORBAX))
    if os.path.exists(target):
      shutil.rmtree(target)
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(target, params_lib.nest({k: np.asarray(v, np.float32) for k, v in flat.items()}))
    ckptr.wait_until_finished()
  if tokenizer is not None:
    tokenizer.hf.save_pretrained(out_dir)
  return out_dir
