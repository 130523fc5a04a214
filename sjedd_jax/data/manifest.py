"""The on-disk dataset format shared by real (preprocessed) and synthetic data.

A dataset is a directory holding image files and ``manifest.jsonl``, one JSON
object per face crop:

    path        image file, relative to the dataset directory (PNG or JPEG)
    source      "real", an FF++ method ("Deepfakes", ...), an expansion's "aug_eye", ... or any
                dataset-specific name (``sjedd_jax.data.sources``); what it means as a target
                is the detector's business (its ``label_fn``)
    is_fake     0 or 1 (the primary label)
    video_id    video (or still-image group) id, for video-level AUC
    identity    identity id (splits are identity-disjoint)
    split       "train", "val" or "test"
    frame       frame index in the video (0 for stills)
    landmarks   68 (x, y) points in crop pixels, iBUG/dlib order (optional for test sets)
    y, observed optional explicit label vector over a label graph's nodes and the mask of its observed
                entries (1 observed, 0 N/A); ``mask`` is read as ``observed`` (older manifests)
    method      optional family name (e.g. "identity_swap"), for cross-manipulation protocols
    sequence    optional ordered manipulation sequence, 1-based component ids (sequential deepfakes)
    forgery_mask optional path of a 0/255 forgery-mask PNG (localisation); absent: none given

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
  observed: list | None = None
  method: str | None = None
  sequence: list | None = None      # manipulated components in order, 1-based ids ([] or None: none)
  forgery_mask: str | None = None   # ground-truth forgery mask image (0/255 PNG), relative path

  def to_json(self) -> str:
    # Shallow field access: dataclasses.asdict would deep-copy the landmarks of every record.
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}
    if self.landmarks is not None:
      d["landmarks"] = [[round(float(x), 1), round(float(y), 1)] for x, y in np.asarray(self.landmarks)]
    return json.dumps(d)


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
  if "mask" in d and "observed" not in d:  # the field's name before 2026-12
    d["observed"] = d.pop("mask")
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
  _check_types(d, where)
  return Record(**d)


def _is_number(x) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x and abs(x) != float("inf")


def _check_types(d: dict, where: str) -> None:
  """Field types of a manifest row, each error naming the row (``file:line``) and the field."""
  for key in ("path", "source", "forgery_mask", "method"):
    v = d.get(key)
    if v is not None and (not isinstance(v, str) or (key in ("path", "source") and not v)):
      raise ManifestError(f"{where}: {key} {v!r} must be a non-empty string")
  if not isinstance(d.get("frame", 0), int) or isinstance(d.get("frame", 0), bool):
    raise ManifestError(f"{where}: frame {d['frame']!r} must be an integer")
  for key in ("y", "observed"):
    v = d.get(key)
    if v is None:
      continue
    if not isinstance(v, list):
      raise ManifestError(f"{where}: {key} must be a list of numbers, got {v!r}")
    bad = [(i, x) for i, x in enumerate(v) if not _is_number(x)]
    if bad:
      i, x = bad[0]
      raise ManifestError(f"{where}: {key}[{i}] = {x!r} is not a number")
  seq = d.get("sequence")
  if seq is not None and (not isinstance(seq, list) or not all(isinstance(x, int) and not isinstance(x, bool)
                                                               for x in seq)):
    raise ManifestError(f"{where}: sequence must be a list of integer component ids, got {seq!r}")
  lm = d.get("landmarks")
  if lm is not None:
    ok = isinstance(lm, list) and all(isinstance(p, list) and len(p) == 2 and all(_is_number(c) for c in p)
                                      for p in lm)
    if not ok:
      raise ManifestError(f"{where}: landmarks must be a list of [x, y] number pairs")


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
