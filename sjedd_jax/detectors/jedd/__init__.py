"""JEDD, the earlier joint-embedding detector (NeurIPS draft), as a detector.

The model (``model.py``: contrastive prompt pairs, cosine similarity, sigmoid,
joint templates, the draft's label graph and table) scores images against the
nodes of a label graph, as SJEDD does, so the detector is SJEDD's
``clip_detector`` with JEDD's module, graph and export.
"""

from __future__ import annotations

import ml_collections

from sjedd_jax import xla_cpu
from sjedd_jax.config import ConfigError
from sjedd_jax.detectors import interface
from sjedd_jax.detectors import sjedd as sjedd_det
from sjedd_jax.detectors.jedd import model as jedd_model

NAME = "jedd"
PAPER = "JEDD: joint-embedding deepfake detection (NeurIPS draft)"
BACKBONE = "CLIP ViT (image + text towers)"
EXPORT_MARKER = jedd_model.EXPORT_META    # "jedd.json"
SYNTHETIC_CONFIG = "jedd_draft.py:synthetic"
check_weights = sjedd_det.check_weights
summarize = sjedd_det.summarize


def defaults(c: ml_collections.ConfigDict) -> None:
  """SJEDD's fields plus ``model.jedd`` (levels, probability, contrastive pairs, token ids)."""
  sjedd_det.defaults(c)
  c.hierarchy = "jedd_draft"
  c.data.label_table = "jedd_draft"
  c.model.similarity = "cosine"
  c.model.cosine_tau = 1.0
  c.model.jedd = ml_collections.ConfigDict(dict(levels=3, probability="sigmoid", contrastive=True,
                                                token_ids="auto", tokenizer=""))


def hierarchy_from_config(config) -> jedd_model.JEDDHierarchy:
  try:
    return jedd_model.hierarchy_from_config(config)
  except (jedd_model.JEDDError, ValueError, OSError) as e:
    raise ConfigError(f"config.hierarchy / config.model.jedd: {e}") from e


def _build(config, h, seed):
  try:
    module = jedd_model.model_from_config(config, h, seed)
    return sjedd_det.compact_vocabulary(module) if config.model.get("compact_vocab", False) else module
  except (jedd_model.JEDDError, ValueError) as e:
    raise ConfigError(f"config.model (detector 'jedd'): {e}") from e


def export(module, out_dir: str, config=None) -> str:
  """The CLIP plus ``jedd.json`` (prompts, template ids, graph, probability)."""
  meta = dict(jedd_model.export_meta(module), config=sjedd_det._to_dict(config))  # pylint: disable=protected-access
  return sjedd_det.write_clip_export(out_dir, module.clip, EXPORT_MARKER, meta, name=NAME,
                                     source="sjedd_jax.train (jedd)")


def make(config) -> interface.Detector:
  h = hierarchy_from_config(config)
  if config.model.get("pretrained") and config.model.jedd.get("token_ids") == "placeholder":
    raise ConfigError("config.model.jedd.token_ids='placeholder' with pretrained weights "
                      f"({config.model.pretrained}): placeholder ids are not CLIP's and would feed the pretrained "
                      "text tower meaningless tokens; use 'auto' or 'tokenizer' with a CLIP tokenizer")
  from sjedd_jax.detectors.sjedd import model as sjedd_model  # pylint: disable=g-import-not-at-top
  return sjedd_det.clip_detector(NAME, hierarchy=h, build=lambda seed: _build(config, h, seed),
                                 trainable=sjedd_model.trainable_filter,
                                 label_fn=sjedd_det.label_fn_from_config(config, h.nodes),
                                 loss=config.get("loss", "fidelity"), image_size=config.data.image_size,
                                 export=export, compiler_options=xla_cpu.from_model_config(config.model, default="ynnpack"))


def load_export(path: str, dtype: str | None = None) -> tuple[interface.Detector, interface.Variables]:
  module = jedd_model.load_export(path, dtype=dtype)
  return sjedd_det.from_module(module, name=NAME, export_fn=export)
