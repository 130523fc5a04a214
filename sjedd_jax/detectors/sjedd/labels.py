"""Table I: label vectors and observed masks for the sources of expanded FF++.

Node order is the spec's (``sjedd_jax.detectors.sjedd.hierarchy.FFPP_NODES``). ``N/A`` entries are
unobserved: ``mask`` is 0 there and they are left out of the losses. The authors'
release writes N/A as 0 and does not mask; ``unobserved_as_zero=True`` does the same.
"""

from __future__ import annotations

import numpy as np

from sjedd_jax.detectors.sjedd.hierarchy import FFPP_NODES

class LabelError(ValueError):
  """A record whose label cannot be made (wrong shape, contradicting its source); names the record."""


NA = -1  # marker for an unobserved entry in the table below

# face, expression, identity, physical_inconsistency, eye, eyebrow, lip, mouth, nose, skin
TABLE_I = {
    "real":            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
    "aug_eye":         (1, NA, 0, 1, 1, 0, 0, 0, 0, 0),
    "aug_lip_mouth":   (1, NA, 0, 1, 0, 0, 1, 1, 0, 0),
    "aug_nose":        (1, 0, 0, 1, 0, 0, 0, 0, 1, 0),
    "Deepfakes":       (1, NA, 1, 1, 1, 1, 1, 1, 1, 1),
    "FaceSwap":        (1, NA, 1, 1, 1, 1, 1, 1, 1, 1),
    "Face2Face":       (1, 1, 0, 1, 0, 0, 1, 1, 0, 0),
    "NeuralTextures":  (1, 1, 0, 1, 0, 0, 1, 1, 0, 0),
}

SOURCES = tuple(TABLE_I)
FAKE_SOURCES = tuple(s for s in SOURCES if s != "real")
# Local-region augmentations of spec section 7 (one source per augmentation).
AUG_SOURCES = ("aug_eye", "aug_lip_mouth", "aug_nose")
# Identity-swap methods whose crops may serve as expansion sources.
SWAP_SOURCES = ("Deepfakes", "FaceSwap")

assert all(len(v) == len(FFPP_NODES) for v in TABLE_I.values())


def ffpp_label(source: str, unobserved_as_zero: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """Returns ``(y, observed_mask)``, two float32 (10,) vectors, for a Table I source.

  With ``unobserved_as_zero`` N/A becomes 0 and the mask is all ones (the release).
  """
  try:
    row = np.asarray(TABLE_I[source], np.int32)
  except KeyError:
    raise KeyError(f"unknown FF++ source {source!r}; expected one of {list(SOURCES)}") from None
  observed = row != NA
  y = np.where(observed, row, 0).astype(np.float32)
  if unobserved_as_zero:
    return y, np.ones_like(y)
  return y, observed.astype(np.float32)


def binary_label(is_fake: bool, num_nodes: int = len(FFPP_NODES)) -> tuple[np.ndarray, np.ndarray]:
  """A label with only the primary node observed (for test sets and the no-relabel ablation)."""
  y = np.zeros(num_nodes, np.float32)
  mask = np.zeros(num_nodes, np.float32)
  y[0] = float(is_fake)
  mask[0] = 1.0
  return y, mask
