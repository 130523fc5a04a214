"""Text templates of the label hierarchy and their CLIP token ids (spec section 3).

The release's ten templates are tokenised by CLIP's public BPE vocabulary; the
ids below are the spec's constants, so a checkpoint without tokenizer files
still works. Other templates need a tokenizer (``ClipTokenizer``, built from the
tokenizer files of a Hugging Face CLIP checkpoint directory).

Example::

  ids = templates.template_ids("release")           # (10, 77) int32, 0-padded
  ids = templates.template_ids("keyword")           # "fake", "altered expression", ...
  tok = templates.ClipTokenizer.from_pretrained(hf_dir)
  ids = templates.template_ids(["a photo of a real face", ...], tokenizer=tok)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sjedd_jax.backbones.clip.tokenizer import (  # pylint: disable=unused-import
    CONTEXT_LENGTH, EOT, SOT, ClipTokenizer, TemplateError, longest, pad, repad)

# Node words in the FF++ hierarchy order (spec section 1), as the release writes them.
FFPP_WORDS = ("fake", "expression", "identity", "physical inconsistency",
              "eye", "eyebrow", "lip", "mouth", "nose", "skin")

# --- the release's templates (spec section 3) --------------------------------
RELEASE_TEMPLATES = (
    "A photo of a fake face",
    "A photo of a face with the global attribute of expression altered",
    "A photo of a face with the global attribute of identity altered",
    "A photo of a face with the global attribute of physical inconsistency altered",
    "A photo of a face with the local attribute of eye altered",
    "A photo of a face with the local attribute of eyebrow altered",
    "A photo of a face with the local attribute of lip altered",
    "A photo of a face with the local attribute of mouth altered",
    "A photo of a face with the local attribute of nose altered",
    "A photo of a face with the local attribute of skin altered",
)

_GLOBAL_PREFIX = (SOT, 320, 1125, 539, 320, 1710, 593, 518, 2779, 527, 5493, 539)
_LOCAL_PREFIX = (SOT, 320, 1125, 539, 320, 1710, 593, 518, 2029, 527, 5493, 539)
_ALTERED = 25201  # "altered"
# CLIP BPE ids of each node word (word-final forms; "inconsistency" is "in" + "consistency").
WORD_IDS = {
    "fake": (5777,),
    "expression": (11357,),
    "identity": (8892,),
    "physical inconsistency": (6671, 512, 25683),
    "eye": (3272,),
    "eyebrow": (34250,),
    "lip": (8546,),
    "mouth": (4932,),
    "nose": (8231,),
    "skin": (3575,),
}

RELEASE_IDS: tuple[tuple[int, ...], ...] = (
    (SOT, 320, 1125, 539, 320, 5777, 1710, EOT),
    *[_GLOBAL_PREFIX + WORD_IDS[g] + (_ALTERED, EOT) for g in FFPP_WORDS[1:4]],
    *[_LOCAL_PREFIX + WORD_IDS[l] + (_ALTERED, EOT) for l in FFPP_WORDS[4:]],
)

# --- keyword templates (ablation, spec section 9 / paper Table VII) ----------
# "fake", "altered g", "altered l". CLIP's BPE tokenises each whitespace-separated
# word on its own (lower-cased, word-final "</w>" forms), so these ids follow
# exactly from the release ids above: no tokenizer files needed.
KEYWORD_TEMPLATES = ("fake",) + tuple(f"altered {w}" for w in FFPP_WORDS[1:])
KEYWORD_IDS: tuple[tuple[int, ...], ...] = (
    (SOT,) + WORD_IDS["fake"] + (EOT,),
    *[(SOT, _ALTERED) + WORD_IDS[w] + (EOT,) for w in FFPP_WORDS[1:]],
)

PRESET_TEMPLATES = {"release": RELEASE_TEMPLATES, "keyword": KEYWORD_TEMPLATES}
PRESET_IDS = {"release": RELEASE_IDS, "keyword": KEYWORD_IDS}


def template_ids(templates: str | Sequence[str] = "release", tokenizer=None,
                 context_length: int = CONTEXT_LENGTH) -> np.ndarray:
  """Token ids (K, context_length) int32 of a template preset or a list of strings.

  Presets ("release", "keyword") use the spec's constants; a list of strings that
  equals a preset's strings does too; any other list needs ``tokenizer``.
  """
  if isinstance(templates, str):
    if templates not in PRESET_IDS:
      raise TemplateError(f"unknown template preset {templates!r}; presets are {sorted(PRESET_IDS)} "
                          "(or pass a list of template strings with a tokenizer)")
    return pad(PRESET_IDS[templates], context_length)
  templates = tuple(templates)
  for name, strings in PRESET_TEMPLATES.items():
    if templates == strings and tokenizer is None:
      return pad(PRESET_IDS[name], context_length)
  if tokenizer is None:
    raise TemplateError(
        "custom templates need a CLIP tokenizer: load a Hugging Face CLIP checkpoint directory "
        "that has tokenizer files (vocab.json + merges.txt or tokenizer.json) with "
        "sjedd_jax.backbones.clip.load_pretrained, or pass tokenizer=ClipTokenizer.from_pretrained(dir); "
        f"got templates {list(templates)[:3]}...")
  ids = np.asarray(tokenizer(list(templates)), np.int32)
  if ids.ndim != 2 or ids.shape[0] != len(templates):
    raise TemplateError(f"tokenizer returned ids of shape {ids.shape} for {len(templates)} templates")
  return repad(ids, context_length)
