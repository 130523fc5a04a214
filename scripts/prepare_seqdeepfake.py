#!/usr/bin/env python
"""Turns a Seq-DeepFake subset into a project dataset directory (manifest.jsonl + dataset.json).

    python scripts/prepare_seqdeepfake.py --root R --subset facial_components --out D

R is the release root holding ``<subset>/annotations/{train,val,test}.csv`` (the
layout of github rshaojimmy/SeqDeepFake; see ``sjedd_jax.detectors.mil_ranking.labels``).
Images are referenced, not copied: the loader opens ``f"{data_dir}/{path}"``, so
D gets one directory symlink ``D/<link_name>`` -> R (absolute) and every manifest
path is ``<link_name>/<path under R>``. ``--no_symlink`` writes paths relative to
D instead (``../..``-style; D must then stay where it is relative to R).

Each CSV ``file_path`` is resolved against R first (SeqFakeFormer joins
``data_root`` and ``file_path``), then against ``R/<subset>``; an absolute
path is used as is. Every image must exist unless ``--allow_missing``.

Records: source "real" for originals, else "seq_<subset>"; is_fake = 1 iff the
sequence is non-empty; video_id = the manifest path (stills); identity "";
split from the CSV; ``sequence`` = the unpadded 1-based ids ([] for originals).
dataset.json: {"name", "subset", "components", "num_components", "num_slots",
"source_root", "counts"}.
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sjedd_jax.data import manifest  # pylint: disable=g-import-not-at-top,wrong-import-position
from sjedd_jax.detectors.mil_ranking import labels  # pylint: disable=g-import-not-at-top,wrong-import-position


class PrepareError(ValueError):
  """The release cannot be turned into a dataset directory (the message says why)."""


def _resolve(root: str, subset: str, file_path: str) -> tuple[str, bool]:
  """(absolute image path, exists) of a CSV file_path; tries R, then R/<subset>."""
  if os.path.isabs(file_path):
    return os.path.normpath(file_path), os.path.exists(file_path)
  candidates = [os.path.join(root, file_path), os.path.join(root, subset, file_path)]
  for c in candidates:
    if os.path.exists(c):
      return os.path.normpath(c), True
  return os.path.normpath(candidates[0]), False


def _link(out: str, link_name: str, root: str) -> None:
  link = os.path.join(out, link_name)
  if os.path.islink(link):
    if os.path.realpath(link) != os.path.realpath(root):
      raise PrepareError(f"{link} already links to {os.readlink(link)!r}, not {root!r}; remove it or "
                         "choose another --link_name")
    return
  if os.path.exists(link):
    raise PrepareError(f"{link} exists and is not a symlink; choose another --link_name")
  os.symlink(root, link, target_is_directory=True)


def prepare(root: str, subset: str, out: str, splits=labels.SPLITS, symlink: bool = True,
            link_name: str = "release", allow_missing: bool = False) -> dict:
  """Writes ``out/manifest.jsonl`` and ``out/dataset.json``; returns the metadata written."""
  root = os.path.abspath(root)
  out = os.path.abspath(out)
  names = labels.components(subset)
  recs = labels.read_release(root, subset, splits)
  if not recs:
    raise PrepareError(f"{root}: no records in the {subset} CSVs for splits {list(splits)}")
  resolved, missing = [], []
  for rec in recs:
    path, ok = _resolve(root, subset, rec.path)
    if not ok:
      missing.append(rec)
    resolved.append(path)
  if missing and not allow_missing:
    shown = "; ".join(f"{r.where}: {r.path}" for r in missing[:5])
    raise PrepareError(f"{len(missing)} of {len(recs)} images not found under {root} or "
                       f"{os.path.join(root, subset)} (first: {shown}); pass --allow_missing to keep them")
  os.makedirs(out, exist_ok=True)
  if symlink:
    _link(out, link_name, root)
  records, counts = [], collections.Counter()
  for rec, path in zip(recs, resolved):
    inside = os.path.commonpath([root, path]) == root
    if symlink and inside:
      rel = os.path.join(link_name, os.path.relpath(path, root))
    else:
      rel = os.path.relpath(path, out)
    rel = rel.replace(os.sep, "/")
    fake = int(bool(rec.sequence))
    records.append(manifest.Record(
        path=rel, source=f"seq_{subset}" if fake else "real", is_fake=fake, video_id=rel,
        split=rec.split, identity="", sequence=list(rec.sequence)))
    counts[f"{rec.split}/{'fake' if fake else 'real'}"] += 1
  meta = {
      "name": f"seqdeepfake_{subset}", "subset": subset, "components": list(names),
      "num_components": len(names), "num_slots": labels.NUM_SLOTS, "source_root": root,
      "counts": dict(sorted(counts.items())),
      "notes": "Seq-DeepFake release; images referenced through "
               + (f"the symlink {link_name!r}" if symlink else "paths relative to this directory"),
  }
  manifest.write(out, records, meta)
  return meta


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True, help="release root holding <subset>/annotations/*.csv")
  p.add_argument("--subset", required=True, choices=sorted(labels.COMPONENTS))
  p.add_argument("--out", required=True, help="dataset directory to write")
  p.add_argument("--splits", nargs="+", default=list(labels.SPLITS), choices=list(labels.SPLITS))
  p.add_argument("--link_name", default="release", help="name of the symlink to R inside --out")
  p.add_argument("--no_symlink", action="store_true", help="write paths relative to --out instead")
  p.add_argument("--allow_missing", action="store_true", help="keep records whose image is absent")
  a = p.parse_args(argv)
  try:
    meta = prepare(a.root, a.subset, a.out, a.splits, not a.no_symlink, a.link_name, a.allow_missing)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {os.path.join(a.out, manifest.MANIFEST)}: {meta['counts']}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
