"""Manipulation sequences: encoding, decoding and the Seq-DeepFake release (spec sections 1, 5).

A manipulation sequence Y = (l_1, ..., l_k) is an ordered tuple of distinct
1-based component ids in {1..L} (empty = original image). The paper's encoding
(Eqs. 1-2):

    y_i = 1 iff i in Y;   r_i = j if i = l_j, else L;   J = 1 iff Y non-empty.

Example (L = 5): Y = (4, 2) -> y = (0, 1, 0, 1, 0), r = (5, 2, 5, 1, 5), J = 1.
The release pads sequences with 0 to 5 slots: ``nose-eye-lip`` = ``[1, 2, 4, 0, 0]``.

Seq-DeepFake release layout (github rshaojimmy/SeqDeepFake, README and
``datasets/dataset.py``), which this module assumes:

    R/<subset>/annotations/{train,val,test}.csv     columns file_path,label (others ignored)
    R/<subset>/images/{train,val,test}/<seq-name>/xxxxxx.jpg   (<seq-name> "original" for reals)

* ``label`` is the string of a 5-slot list, e.g. ``"[1, 2, 4, 0, 0]"`` (ids in
  manipulation order, right-padded with 0). SeqFakeFormer parses character 1 of
  each comma-separated piece; here the whole piece is parsed as an integer, so the
  same strings are read, and anything else is refused with the file and line.
* ``file_path`` is relative to R (SeqFakeFormer joins ``data_root`` and
  ``file_path``; whether it starts with ``<subset>/`` is not visible without the
  data, so ``scripts/prepare_seqdeepfake.py`` resolves it against R first, then
  against ``R/<subset>``). Records keep the CSV string unchanged.
* Labels are validated [I]: ids in 1..L, no repeated id (the folder names show
  components without repetition, which the ranking encoding needs), no non-zero
  after a zero, exactly 5 slots; a file path may appear once across all splits.

Decoding (section 5): predicted set {i : P_i > 0.5}, ordered by decreasing P_i
(ties to the lower index), ids 1-based, truncated to 5, right-padded with 0;
optionally gated by the MIL score (P(x) < 0.5 -> original).
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from collections.abc import Iterable, Sequence

import numpy as np

NUM_SLOTS = 5
SPLITS = ("train", "val", "test")
COMPONENTS: dict[str, tuple[str, ...]] = {
    # Seq-FaceComp (CelebAMask-HQ + StyleMapGAN): 1 nose, 2 eye, 3 eyebrow, 4 lip, 5 hair.
    "facial_components": ("nose", "eye", "eyebrow", "lip", "hair"),
    # Seq-FaceAttr (FFHQ + Talk-To-Edit): 1 Bangs, 2 Eyeglasses, 3 Beard, 4 Smiling, 5 Young.
    "facial_attributes": ("Bangs", "Eyeglasses", "Beard", "Smiling", "Young"),
}
CSV_COLUMNS = ("file_path", "label")
_LABEL_RE = re.compile(r"^\s*\[(.*)\]\s*$")


class SequenceError(ValueError):
  """A manipulation sequence or label that cannot be used (the message names where)."""


def components(subset: str) -> tuple[str, ...]:
  """Component names of a Seq-DeepFake subset, in id order (id = position + 1)."""
  if subset not in COMPONENTS:
    raise SequenceError(f"unknown Seq-DeepFake subset {subset!r}; expected one of {sorted(COMPONENTS)}")
  return COMPONENTS[subset]


def _at(where: str) -> str:
  return f"{where}: " if where else ""


def validate(sequence: Iterable[int], num_components: int = NUM_SLOTS, where: str = "") -> tuple[int, ...]:
  """Checks an unpadded sequence (distinct ids in 1..L) and returns it as a tuple of ints."""
  seq = tuple(int(i) for i in sequence)
  for i in seq:
    if not 1 <= i <= num_components:
      raise SequenceError(f"{_at(where)}component id {i} out of range 1..{num_components} in {list(seq)}")
  if len(set(seq)) != len(seq):
    dup = sorted({i for i in seq if seq.count(i) > 1})
    raise SequenceError(f"{_at(where)}repeated component id(s) {dup} in {list(seq)}")
  return seq


def pad(sequence: Sequence[int], num_slots: int = NUM_SLOTS) -> list[int]:
  """Right-pads with 0 to ``num_slots`` (the release's form): (1, 2, 4) -> [1, 2, 4, 0, 0]."""
  seq = [int(i) for i in sequence]
  if len(seq) > num_slots:
    raise SequenceError(f"sequence {seq} is longer than {num_slots} slots")
  return seq + [0] * (num_slots - len(seq))


def unpad(padded: Sequence[int], num_components: int = NUM_SLOTS, num_slots: int | None = NUM_SLOTS,
          where: str = "") -> tuple[int, ...]:
  """The sequence of a zero-padded list, validated: [1, 2, 4, 0, 0] -> (1, 2, 4).

  Raises ``SequenceError`` for a wrong number of slots (when ``num_slots`` is not
  None), a non-zero after a zero, an id out of range or a repeated id.
  """
  vals = [int(v) for v in padded]
  if num_slots is not None and len(vals) != num_slots:
    raise SequenceError(f"{_at(where)}expected {num_slots} slots, got {len(vals)}: {vals}")
  k = vals.index(0) if 0 in vals else len(vals)
  if any(v != 0 for v in vals[k:]):
    raise SequenceError(f"{_at(where)}non-zero id after a 0 (padding must be at the end): {vals}")
  return validate(vals[:k], num_components, where)


def parse_label(text: str, num_components: int = NUM_SLOTS, num_slots: int = NUM_SLOTS,
                where: str = "") -> tuple[int, ...]:
  """Parses a released label string ``"[1, 2, 4, 0, 0]"`` into the sequence (1, 2, 4)."""
  m = _LABEL_RE.match(str(text))
  if m is None:
    raise SequenceError(f"{_at(where)}label {text!r} is not a bracketed list like '[1, 2, 4, 0, 0]'")
  pieces = [p.strip() for p in m.group(1).split(",")]
  try:
    vals = [int(p) for p in pieces]
  except ValueError:
    raise SequenceError(f"{_at(where)}label {text!r} has a non-integer entry") from None
  return unpad(vals, num_components, num_slots, where)


def encode(sequence: Sequence[int], num_components: int = NUM_SLOTS) -> tuple[np.ndarray, np.ndarray, int]:
  """Y -> (y (L,) float32, r (L,) int32, J): Eqs. 1-2. (4, 2) -> (0,1,0,1,0), (5,2,5,1,5), 1."""
  seq = validate(sequence, num_components)
  y = np.zeros(num_components, np.float32)
  r = np.full(num_components, num_components, np.int32)
  for j, i in enumerate(seq, 1):
    y[i - 1] = 1.0
    r[i - 1] = j
  return y, r, int(bool(seq))


def decode(y: Sequence[float], r: Sequence[int]) -> tuple[int, ...]:
  """(y, r) -> Y: the components with y_i = 1, ordered by r_i (inverse of ``encode``)."""
  y = np.asarray(y)
  r = np.asarray(r)
  ids = np.flatnonzero(y > 0.5)
  order = np.argsort(r[ids], kind="stable")
  return tuple(int(i) + 1 for i in ids[order])


def encode_padded(padded: np.ndarray, num_components: int = NUM_SLOTS) -> dict[str, np.ndarray]:
  """Batch form of ``encode`` for (M, S) zero-padded sequences (assumed valid; see ``unpad``).

  Returns {"seq": (M, S) int32, "y": (M, L) float32, "r": (M, L) int32, "J": (M,) int32}.
  """
  seq = np.asarray(padded, np.int32)
  if seq.ndim != 2:
    raise SequenceError(f"padded sequences must be (M, slots), got shape {seq.shape}")
  if seq.size and (seq.min() < 0 or seq.max() > num_components):
    raise SequenceError(f"padded sequences hold ids outside 0..{num_components}")
  m, s = seq.shape
  rows, slots = np.nonzero(seq)
  y = np.zeros((m, num_components), np.float32)
  r = np.full((m, num_components), num_components, np.int32)
  y[rows, seq[rows, slots] - 1] = 1.0
  r[rows, seq[rows, slots] - 1] = slots + 1
  return {"seq": seq, "y": y, "r": r, "J": (seq > 0).any(axis=1).astype(np.int32)}


def decode_predictions(probs: np.ndarray, threshold: float = 0.5, num_slots: int = NUM_SLOTS,
                       mil_scores: np.ndarray | None = None, mil_threshold: float = 0.5) -> np.ndarray:
  """Probabilities (M, L) (or (L,)) -> predicted zero-padded sequences (M, num_slots) int32.

  Predicted set = {i : P_i > threshold}, ordered by decreasing P_i with ties to
  the lower index (stable sort), ids 1-based, truncated to ``num_slots``. With
  ``mil_scores`` (M,), images with P(x) < ``mil_threshold`` are decoded as
  original. Logits with ``threshold=0`` give the same sets and an order free of
  float32 saturation ties.
  """
  p = np.asarray(probs, np.float64)
  squeeze = p.ndim == 1
  p = np.atleast_2d(p)
  if p.ndim != 2:
    raise SequenceError(f"probabilities must be (M, L), got shape {np.shape(probs)}")
  m, num_components = p.shape
  order = np.argsort(-p, axis=1, kind="stable")
  chosen = np.take_along_axis(p, order, axis=1) > threshold  # a prefix of each row
  if mil_scores is not None:
    gate = np.asarray(mil_scores, np.float64).reshape(m) >= mil_threshold
    chosen &= gate[:, None]
  ids = np.where(chosen, order + 1, 0).astype(np.int32)
  out = np.zeros((m, num_slots), np.int32)
  k = min(num_slots, num_components)
  out[:, :k] = ids[:, :k]
  return out[0] if squeeze else out


@dataclasses.dataclass(frozen=True)
class SeqRecord:
  """One image of the release: CSV ``file_path`` (unchanged), unpadded sequence, split, CSV location."""
  path: str
  sequence: tuple[int, ...]
  split: str
  where: str = ""


def annotation_path(root: str | os.PathLike, subset: str, split: str) -> str:
  """``R/<subset>/annotations/<split>.csv`` (the release layout)."""
  return os.path.join(os.fspath(root), subset, "annotations", f"{split}.csv")


def read_csv(path: str | os.PathLike, split: str, num_components: int = NUM_SLOTS,
             num_slots: int = NUM_SLOTS) -> list[SeqRecord]:
  """Reads one released annotation CSV (header with ``file_path`` and ``label``).

  Errors (``SequenceError``) name the file and the CSV line: a missing column, an
  empty path, a malformed label, an id out of range, a repeated id, a non-zero
  after a zero, or a file path repeated within the file.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such annotation file")
  out: list[SeqRecord] = []
  seen: dict[str, int] = {}
  with open(path, newline="", encoding="utf-8-sig") as f:
    reader = csv.DictReader(f)
    cols = [c.strip() for c in (reader.fieldnames or [])]
    missing = [c for c in CSV_COLUMNS if c not in cols]
    if missing:
      raise SequenceError(f"{path}:1: missing column(s) {missing}; header is {cols}")
    reader.fieldnames = cols
    for row in reader:
      line = reader.line_num
      where = f"{path}:{line}"
      file_path = (row.get("file_path") or "").strip()
      label = row.get("label")
      if not file_path:
        raise SequenceError(f"{where}: empty file_path")
      if label is None:
        raise SequenceError(f"{where}: missing label")
      seq = parse_label(label, num_components, num_slots, where)
      if file_path in seen:
        raise SequenceError(f"{where}: file_path {file_path!r} repeats line {seen[file_path]}")
      seen[file_path] = line
      out.append(SeqRecord(file_path, seq, split, where))
  return out


def read_release(root: str | os.PathLike, subset: str, splits: Sequence[str] = SPLITS) -> list[SeqRecord]:
  """All records of one subset's split CSVs; a file path may appear in one split only."""
  num = len(components(subset))
  out: list[SeqRecord] = []
  first: dict[str, SeqRecord] = {}
  for split in splits:
    if split not in SPLITS:
      raise SequenceError(f"split {split!r} is not one of {SPLITS}")
    for rec in read_csv(annotation_path(root, subset, split), split, num):
      if rec.path in first:
        raise SequenceError(f"{rec.where}: file_path {rec.path!r} repeats {first[rec.path].where}")
      first[rec.path] = rec
      out.append(rec)
  return out


def name_of(sequence: Sequence[int], subset: str) -> str:
  """Folder-style name of a sequence: (1, 2, 4) -> "nose-eye-lip"; () -> "original"."""
  names = components(subset)
  seq = validate(sequence, len(names))
  return "-".join(names[i - 1] for i in seq) if seq else "original"
