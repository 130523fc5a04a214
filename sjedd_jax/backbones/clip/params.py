"""Checkpoint key mapping for CLIP: Hugging Face / OpenAI state dicts <-> NNX params.

Every source format is first normalised to OpenAI's ``clip/model.py`` state-dict
names (the canonical torch layout, also what the SJEDD release saves); one table
then maps those names to the NNX parameter paths of ``sjedd_jax.backbones.clip.modeling.CLIP``:

  HF ``CLIPModel``  --hf_to_openai-->  OpenAI  --openai_to_nnx-->  NNX flat params

Conversions (torch keeps ``Linear.weight`` as (out, in), NNX ``kernel`` as (in, out)):
  * Linear weights are transposed; convolutions go from OIHW to HWIO;
  * HF's separate q/k/v projections are concatenated into OpenAI's fused
    ``in_proj_weight`` (NNX ``attn.qkv``); HF's ``*_projection.weight`` are
    (embed, width) and are transposed into OpenAI's (width, embed) ``proj``.

Shapes are read off the tensors (``config_from_openai``); OpenAI state dicts carry
no head count, so heads = width // 64, as OpenAI's loader does.

Example::

  sd = params.normalise_state_dict(torch_state_dict_as_numpy)   # any format
  cfg = params.config_from_openai(sd)
  flat = params.openai_to_nnx(sd, cfg)      # {"vision.conv1.kernel": array, ...}
  params.assign(model, flat)                # errors list missing/unexpected keys
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from sjedd_jax.backbones.clip.modeling import CLIP, CLIPConfig
from sjedd_jax.weights import CheckpointError, check_keys, check_values


# Keys present in real checkpoints that the model does not use.
_IGNORED = re.compile(
    r"^(logit_scale|input_resolution|context_length|vocab_size"
    r"|.*position_ids)$")

# Anchors that identify a format (and, via their prefix, a wrapper prefix).
_ANCHORS = {
    "openai": "visual.conv1.weight",
    "hf": "vision_model.embeddings.patch_embedding.weight",
    "nnx": "vision.conv1.kernel",
}


# ------------------------------------------------------------------ formats
def detect_format(keys) -> tuple[str, str]:
  """(format, prefix) of a state dict: format in {"openai", "hf", "nnx"}.

  The prefix is whatever precedes the anchor key (e.g. "module." from DDP,
  "clip_model.", "model."), so wrapped dicts are recognised too.
  """
  keys = list(keys)
  for fmt, anchor in _ANCHORS.items():
    for k in keys:
      if k == anchor or k.endswith("." + anchor):
        return fmt, k[: len(k) - len(anchor)]
  if any(re.search(r"(^|\.)visual\.layer1\.", k) for k in keys):
    raise CheckpointError("this is a ResNet CLIP (visual.layer1.*); only ViT CLIP models are supported")
  sample = sorted(keys)[:8]
  raise CheckpointError(
      "not a CLIP state dict: found none of the keys "
      f"{sorted(_ANCHORS.values())} (first keys: {sample})")


def strip_prefix(sd: Mapping[str, Any], prefix: str) -> dict[str, Any]:
  """Keeps the keys under ``prefix`` (stripped); other keys are an error unless ignorable."""
  if not prefix:
    return dict(sd)
  out, foreign = {}, []
  for k, v in sd.items():
    if k.startswith(prefix):
      out[k[len(prefix):]] = v
    elif not _IGNORED.match(k):
      foreign.append(k)
  if foreign:
    raise CheckpointError(f"keys outside the CLIP prefix {prefix!r}: {sorted(foreign)[:20]}"
                          + (f" (and {len(foreign) - 20} more)" if len(foreign) > 20 else ""))
  return out


def normalise_state_dict(sd: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], str]:
  """Any supported state dict -> (OpenAI-format dict, source format).

  NNX-format dicts (the project's own) are returned as they are, with format "nnx".
  """
  fmt, prefix = detect_format(sd.keys())
  sd = strip_prefix(sd, prefix)
  if fmt == "hf":
    return hf_to_openai(sd), "hf"
  return dict(sd), fmt


# ------------------------------------------------------------ HF -> OpenAI
_HF_BLOCK = {
    "self_attn.out_proj.weight": "attn.out_proj.weight",
    "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight",
    "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight",
    "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight",
    "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight",
    "mlp.fc2.bias": "mlp.c_proj.bias",
}
_HF_TOP = {
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "logit_scale": "logit_scale",
}
_HF_LAYER = re.compile(r"^(vision|text)_model\.encoder\.layers\.(\d+)\.(.+)$")


def hf_to_openai(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """transformers ``CLIPModel`` state dict -> OpenAI ``clip/model.py`` state dict."""
  out: dict[str, np.ndarray] = {}
  qkv: dict[tuple[str, str, str], dict[str, np.ndarray]] = {}
  unexpected = []
  for k, v in sd.items():
    v = np.asarray(v)
    if k in _HF_TOP:
      out[_HF_TOP[k]] = v
    elif k == "visual_projection.weight":
      out["visual.proj"] = v.T
    elif k == "text_projection.weight":
      out["text_projection"] = v.T
    elif (m := _HF_LAYER.match(k)):
      tower, i, rest = m.groups()
      prefix = f"visual.transformer.resblocks.{i}." if tower == "vision" else f"transformer.resblocks.{i}."
      if (q := re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)):
        qkv.setdefault((prefix, q.group(2), tower), {})[q.group(1)] = v
      elif rest in _HF_BLOCK:
        out[prefix + _HF_BLOCK[rest]] = v
      else:
        unexpected.append(k)
    elif not _IGNORED.match(k):
      unexpected.append(k)
  for (prefix, kind, _), parts in qkv.items():
    missing = [p for p in "qkv" if p not in parts]
    if missing:
      raise CheckpointError(f"{prefix}: missing HF self_attn.{{{','.join(missing)}}}_proj.{kind}")
    out[f"{prefix}attn.in_proj_{kind}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
  if unexpected:
    raise CheckpointError(f"unexpected keys in the HF CLIP state dict: {sorted(unexpected)}")
  return out


def openai_to_hf(sd: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Inverse of ``hf_to_openai`` (used by tests and for exporting)."""
  inv_top = {v: k for k, v in _HF_TOP.items()}
  inv_block = {v: k for k, v in _HF_BLOCK.items()}
  out = {}
  for k, v in sd.items():
    v = np.asarray(v)
    if k in inv_top:
      out[inv_top[k]] = v
    elif k == "visual.proj":
      out["visual_projection.weight"] = v.T
    elif k == "text_projection":
      out["text_projection.weight"] = v.T
    elif (m := re.match(r"^(visual\.)?transformer\.resblocks\.(\d+)\.(.+)$", k)):
      tower = "vision" if m.group(1) else "text"
      prefix = f"{tower}_model.encoder.layers.{m.group(2)}."
      rest = m.group(3)
      if rest.startswith("attn.in_proj_"):
        kind = rest.rsplit("_", 1)[1]
        for name, part in zip("qkv", np.split(v, 3, axis=0)):
          out[f"{prefix}self_attn.{name}_proj.{kind}"] = part
      else:
        out[prefix + inv_block[rest]] = v
    elif not _IGNORED.match(k):
      raise CheckpointError(f"openai_to_hf: unknown key {k!r}")
  return out


# --------------------------------------------------------- OpenAI <-> NNX
# (openai sub-key, nnx sub-path, transform) for one residual block.
_BLOCK = [
    ("attn.in_proj_weight", "attn.qkv.kernel", "T"),
    ("attn.in_proj_bias", "attn.qkv.bias", None),
    ("attn.out_proj.weight", "attn.out.kernel", "T"),
    ("attn.out_proj.bias", "attn.out.bias", None),
    ("ln_1.weight", "ln_1.scale", None),
    ("ln_1.bias", "ln_1.bias", None),
    ("ln_2.weight", "ln_2.scale", None),
    ("ln_2.bias", "ln_2.bias", None),
    ("mlp.c_fc.weight", "mlp.c_fc.kernel", "T"),
    ("mlp.c_fc.bias", "mlp.c_fc.bias", None),
    ("mlp.c_proj.weight", "mlp.c_proj.kernel", "T"),
    ("mlp.c_proj.bias", "mlp.c_proj.bias", None),
]
_TOP = [
    ("visual.conv1.weight", "vision.conv1.kernel", "conv"),
    ("visual.class_embedding", "vision.class_embedding", None),
    ("visual.positional_embedding", "vision.positional_embedding", None),
    ("visual.ln_pre.weight", "vision.ln_pre.scale", None),
    ("visual.ln_pre.bias", "vision.ln_pre.bias", None),
    ("visual.ln_post.weight", "vision.ln_post.scale", None),
    ("visual.ln_post.bias", "vision.ln_post.bias", None),
    ("visual.proj", "vision.proj", None),
    ("token_embedding.weight", "text.token_embedding.embedding", None),
    ("positional_embedding", "text.positional_embedding", None),
    ("ln_final.weight", "text.ln_final.scale", None),
    ("ln_final.bias", "text.ln_final.bias", None),
    ("text_projection", "text.text_projection", None),
]


def key_table(cfg: CLIPConfig) -> list[tuple[str, str, str | None]]:
  """All (openai key, nnx path, transform) triples of a model with config ``cfg``."""
  table = list(_TOP)
  for tower, prefix, n in (("vision", "visual.transformer.resblocks", cfg.vision_layers),
                           ("text", "transformer.resblocks", cfg.text_layers)):
    for i in range(n):
      for o, p, t in _BLOCK:
        table.append((f"{prefix}.{i}.{o}", f"{tower}.transformer.blocks.{i}.{p}", t))
  return table


def _forward(x: np.ndarray, t: str | None) -> np.ndarray:
  if t == "T":
    return x.T
  if t == "conv":
    return x.transpose(2, 3, 1, 0)  # OIHW -> HWIO
  return x


def _backward(x: np.ndarray, t: str | None) -> np.ndarray:
  if t == "T":
    return x.T
  if t == "conv":
    return x.transpose(3, 2, 0, 1)  # HWIO -> OIHW
  return x


def _count_layers(keys, prefix: str) -> int:
  pat = re.compile(r"^" + re.escape(prefix) + r"\.(\d+)\.")
  idx = {int(m.group(1)) for k in keys if (m := pat.match(k))}
  if idx and idx != set(range(len(idx))):
    raise CheckpointError(f"{prefix}: layer indices are not contiguous: {sorted(idx)}")
  return len(idx)


def config_from_openai(sd: Mapping[str, Any], **overrides) -> CLIPConfig:
  """Reads a ``CLIPConfig`` off the tensor shapes of an OpenAI-format state dict.

  heads = width // 64 (OpenAI's rule) unless ``vision_heads``/``text_heads`` are given.
  """
  need = ["visual.conv1.weight", "visual.positional_embedding", "text_projection",
          "positional_embedding", "token_embedding.weight", "ln_final.weight",
          "visual.transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_fc.weight"]
  missing = [k for k in need if k not in sd]
  if missing:
    raise CheckpointError(f"cannot infer the CLIP shapes: missing keys {missing}")
  shape = lambda k: tuple(np.shape(sd[k]))
  vw, _, patch, patch2 = shape("visual.conv1.weight")
  if patch != patch2:
    raise CheckpointError(f"non-square patch {patch}x{patch2} in visual.conv1.weight")
  n_pos = shape("visual.positional_embedding")[0]
  grid = int(round((n_pos - 1) ** 0.5))
  if grid * grid + 1 != n_pos:
    raise CheckpointError(f"visual.positional_embedding has {n_pos} rows, not grid**2 + 1")
  tw = shape("ln_final.weight")[0]
  cfg = dict(
      embed_dim=shape("text_projection")[1],
      image_size=patch * grid,
      patch_size=patch,
      vision_width=vw,
      vision_layers=_count_layers(sd, "visual.transformer.resblocks"),
      vision_heads=max(vw // 64, 1),
      vision_mlp_dim=shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
      text_width=tw,
      text_layers=_count_layers(sd, "transformer.resblocks"),
      text_heads=max(tw // 64, 1),
      text_mlp_dim=shape("transformer.resblocks.0.mlp.c_fc.weight")[0],
      vocab_size=shape("token_embedding.weight")[0],
      context_length=shape("positional_embedding")[0],
  )
  cfg.update({k: v for k, v in overrides.items() if v is not None})
  try:
    return CLIPConfig(**cfg)
  except ValueError as e:
    raise CheckpointError(f"inferred CLIP shapes do not make a valid model: {e}") from e


def openai_to_nnx(sd: Mapping[str, Any], cfg: CLIPConfig) -> dict[str, np.ndarray]:
  """OpenAI state dict -> flat NNX params {"vision.conv1.kernel": array, ...}.

  Raises ``CheckpointError`` listing every missing and unexpected key.
  """
  table = key_table(cfg)
  expected = {o for o, _, _ in table}
  missing = sorted(expected - set(sd))
  unexpected = sorted(k for k in set(sd) - expected if not _IGNORED.match(k))
  if missing or unexpected:
    raise CheckpointError(
        f"state dict does not match the CLIP model ({cfg.vision_layers}+{cfg.text_layers} layers):"
        + (f"\n  missing keys ({len(missing)}): {missing}" if missing else "")
        + (f"\n  unexpected keys ({len(unexpected)}): {unexpected}" if unexpected else ""))
  return {p: np.asarray(_forward(np.asarray(sd[o]), t), np.float32) for o, p, t in table}


def nnx_to_openai(flat: Mapping[str, Any], cfg: CLIPConfig) -> dict[str, np.ndarray]:
  """Flat NNX params -> OpenAI state dict (loadable by OpenAI's / the release's torch code)."""
  return {o: np.ascontiguousarray(_backward(np.asarray(flat[p]), t)) for o, p, t in key_table(cfg)}


# ----------------------------------------------------- NNX model <-> flat
def _path_str(path) -> str:
  return ".".join(str(p) for p in path)


# Stacked block parameters of a ``scan_layers`` model: "<tower>.transformer.blocks.<name>"
# with a leading layer axis (no layer index in the path).
_STACKED = re.compile(r"^(.*\.)?(vision|text)\.transformer\.blocks\.(?!\d+\.)(.+)$")


def _per_layer_key(key: str, layer: int) -> str:
  m = _STACKED.match(key)
  return f"{m.group(1) or ''}{m.group(2)}.transformer.blocks.{layer}.{m.group(3)}"


def _variables(model) -> dict[str, Any]:
  return {_path_str(path): var for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def flatten(model: CLIP) -> dict[str, np.ndarray]:
  """The model's parameters as {"vision.conv1.kernel": np.ndarray, ...}.

  One key per layer ("vision.transformer.blocks.0.ln_1.scale"), also for a
  ``scan_layers`` model, whose stacked parameters are split here.
  """
  out = {}
  for k, var in _variables(model).items():
    value = np.asarray(var.get_value())
    if _STACKED.match(k):
      out.update({_per_layer_key(k, i): value[i] for i in range(value.shape[0])})
    else:
      out[k] = value
  return out


def flatten_shapes(model: CLIP) -> dict[str, tuple[int, ...]]:
  """{"vision.conv1.kernel": shape, ...} with one key per layer, as ``flatten``; works on
  abstract (``nnx.eval_shape``) models too."""
  out = {}
  for k, var in _variables(model).items():
    shape = tuple(var.shape)
    if _STACKED.match(k):
      out.update({_per_layer_key(k, i): shape[1:] for i in range(shape[0])})
    else:
      out[k] = shape
  return out


def nest(flat: Mapping[str, Any]) -> dict[str, Any]:
  """{"a.b.c": x} -> {"a": {"b": {"c": x}}} (for orbax, which wants nested trees)."""
  out: dict[str, Any] = {}
  for k, v in flat.items():
    node = out
    *parents, leaf = k.split(".")
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = v
  return out


def unnest(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  """Inverse of ``nest``."""
  out = {}
  for k, v in tree.items():
    key = f"{prefix}{k}"
    if isinstance(v, Mapping):
      out.update(unnest(v, key + "."))
    else:
      out[key] = v
  return out


def assign(model: CLIP, flat: Mapping[str, Any], where: str = "checkpoint") -> CLIP:
  """Writes flat params (one key per layer, as ``flatten``) into ``model`` in place; checks
  names and shapes first. A ``scan_layers`` model gets its layers stacked."""
  state = nnx.state(model, nnx.Param)
  variables = {_path_str(path): var for path, var in nnx.to_flat_state(state)}
  shapes = flatten_shapes(model)
  check_keys(shapes, flat, where, "the model")
  check_values({k: flat[k] for k in shapes}, where)
  for k, var in variables.items():
    if _STACKED.match(k):
      value = np.stack([np.asarray(flat[_per_layer_key(k, i)]) for i in range(var.shape[0])])
    else:
      value = np.asarray(flat[k])
    var.set_value(jnp.asarray(value, dtype=var.get_value().dtype))
  nnx.update(model, state)
  return model
