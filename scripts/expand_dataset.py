#!/usr/bin/env python
"""Semantics-oriented dataset expansion (spec section 7) of a manifest dataset directory.

Adds ``aug_eye``, ``aug_lip_mouth`` and ``aug_nose`` faces (or, with ``--mode xray``,
Face X-ray-style blends labelled binary fake only) to a dataset with landmarks
(preprocessed FF++ or the synthetic world). Resumable: run it again after an
interruption and it completes the missing images.

    python scripts/expand_dataset.py --data data/ffpp_c23 --out data/ffpp_c23   # in place
    python scripts/expand_dataset.py --data data/synth --out data/synth_xray --mode xray
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sjedd_jax.data import expand as expand_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from sjedd_jax.data import manifest  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", required=True, help="input dataset directory (manifest.jsonl with landmarks)")
  ap.add_argument("--out", default=None, help="output dataset directory (default: --data, in place)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--per_region", type=int, default=None,
                  help="images per region in total (default: as many per split as the largest manipulation method)")
  ap.add_argument("--regions", default="eye,lip_mouth,nose", help="comma-separated regions")
  ap.add_argument("--mode", choices=sorted(expand_lib.METHOD), default="regions")
  ap.add_argument("--splits", default=None, help="comma-separated splits to expand (default: all)")
  ap.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
  args = ap.parse_args(argv)
  try:
    recs = expand_lib.expand(args.data, args.out, seed=args.seed, mode=args.mode,
                             regions=[r for r in args.regions.split(",") if r], per_region=args.per_region,
                             splits=None if args.splits is None else args.splits.split(","),
                             workers=args.workers)
  except (expand_lib.ExpansionError, manifest.ManifestError, FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  counts = collections.Counter(r.source for r in recs)
  print(f"{args.out or args.data}: {len(recs)} faces; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
  return 0


if __name__ == "__main__":
  sys.exit(main())
