"""The on-disk dataset format shared by real (preprocessed) and synthetic data.

A dataset is a directory holding image files and ``manifest.jsonl``, one JSON
object per face crop:

    path        image file, relative to the dataset directory (PNG or JPEG)
    source      Table I source ("real", "Deepfakes", "aug_eye", ...) or any
                dataset-specific name (then ``y``/``mask`` or ``is_fake`` must say the label)
    is_fake     0 or 1 (the primary label)
    video_id    video (or still-image group) id, for video-level AUC
    identity    identity id (splits are identity-disjoint)
    split       "train", "val" or "test"
    frame       frame index in the video (0 for stills)
    landmarks   68 (x, y) points in crop pixels, iBUG/dlib order (optional for test sets)
    y, mask     optional explicit label vector and observed mask over the hierarchy's nodes
    method      optional family name (e.g. "identity_swap"), for cross-manipulation protocols

``dataset.json`` beside it holds metadata: name, hierarchy (a name such as "ffpp"
or a graph dict), image size and free-form notes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from sjedd_jax import labels as labels_lib

MANIFEST = "manifest.jsonl"
METADATA = "dataset.json"
SPLITS = ("train", "val", "test")
REQUIRED = ("path", "source", "is_fake", "video_id", "split")


class ManifestError(ValueError):
  """A manifest line or dataset directory that cannot be used."""


@dataclasses.dataclass
class Record:
  path: str
  source: str
  is_fake: int
  video_id: str
  split: str
  identity: str = ""
  frame: int = 0
  landmarks: list | None = None
  y: list | None = None
  mask: list | None = None
  method: str | None = None

  def to_json(self) -> str:
    # Shallow field access: dataclasses.asdict would deep-copy the landmarks of every record.
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
    if self.landmarks is not None:
      d["landmarks"] = [[round(float(x), 1), round(float(y), 1)] for x, y in np.asarray(self.landmarks)]
    return json.dumps(d)


def label_of(rec: Record, num_nodes: int = 10, unobserved_as_zero: bool = False,
             binary_only: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The (y, mask) training target of a record.

  Explicit ``y``/``mask`` win; otherwise a Table I source gives its row; otherwise
  only the primary label (``is_fake``) is observed. ``binary_only`` keeps just the
  primary label (the no-relabelling ablation).
  """
  if binary_only:
    return labels_lib.binary_label(bool(rec.is_fake), num_nodes)
  if rec.y is not None:
    y = np.asarray(rec.y, np.float32)
    mask = np.ones_like(y) if rec.mask is None else np.asarray(rec.mask, np.float32)
    if y.shape != (num_nodes,) or mask.shape != (num_nodes,):
      raise ManifestError(f"{rec.path}: y/mask have shape {y.shape}/{mask.shape}, expected ({num_nodes},)")
    if unobserved_as_zero:
      y, mask = y * mask, np.ones_like(mask)
    return y, mask
  if rec.source in labels_lib.TABLE_I and num_nodes == len(labels_lib.TABLE_I["real"]):
    y, mask = labels_lib.ffpp_label(rec.source, unobserved_as_zero)
    if int(y[0]) != int(rec.is_fake):
      raise ManifestError(f"{rec.path}: source {rec.source!r} contradicts is_fake={rec.is_fake}")
    return y, mask
  return labels_lib.binary_label(bool(rec.is_fake), num_nodes)


def parse_line(line: str, where: str) -> Record:
  try:
    d = json.loads(line)
  except json.JSONDecodeError as e:
    raise ManifestError(f"{where}: not valid JSON ({e})") from e
  if not isinstance(d, dict):
    raise ManifestError(f"{where}: expected a JSON object, got {type(d).__name__}")
  missing = [k for k in REQUIRED if k not in d]
  if missing:
    raise ManifestError(f"{where}: missing field(s) {missing}")
  fields = {f.name for f in dataclasses.fields(Record)}
  unknown = sorted(set(d) - fields)
  if unknown:
    raise ManifestError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(fields)}")
  if d["split"] not in SPLITS:
    raise ManifestError(f"{where}: split {d['split']!r} is not one of {SPLITS}")
  if d["is_fake"] not in (0, 1, True, False):
    raise ManifestError(f"{where}: is_fake {d['is_fake']!r} must be 0 or 1")
  d["is_fake"] = int(d["is_fake"])
  d["video_id"] = str(d["video_id"])
  if "identity" in d:
    d["identity"] = str(d["identity"])
  return Record(**d)


def read(dataset_dir: str | os.PathLike, splits: Sequence[str] | None = None) -> list[Record]:
  """Reads ``dataset_dir/manifest.jsonl``; optionally keeps only some splits."""
  path = os.path.join(dataset_dir, MANIFEST)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no {MANIFEST} in {os.fspath(dataset_dir)!r}: not a prepared dataset directory")
  out = []
  with open(path) as f:
    for i, line in enumerate(f, 1):
      if line.strip():
        rec = parse_line(line, f"{path}:{i}")
        if splits is None or rec.split in splits:
          out.append(rec)
  return out


def write(dataset_dir: str | os.PathLike, records: Iterable[Record], metadata: dict[str, Any] | None = None) -> str:
  """Writes the manifest atomically (temp file + rename), and ``dataset.json`` if given."""
  os.makedirs(dataset_dir, exist_ok=True)
  path = os.path.join(dataset_dir, MANIFEST)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    for rec in records:
      f.write(rec.to_json() + "\n")
  os.replace(tmp, path)
  if metadata is not None:
    write_metadata(dataset_dir, metadata)
  return path


def write_metadata(dataset_dir: str | os.PathLike, metadata: dict[str, Any]) -> None:
  path = os.path.join(dataset_dir, METADATA)
  with open(path + ".tmp", "w") as f:
    json.dump(metadata, f, indent=2)
  os.replace(path + ".tmp", path)


def read_metadata(dataset_dir: str | os.PathLike) -> dict[str, Any]:
  path = os.path.join(dataset_dir, METADATA)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)
