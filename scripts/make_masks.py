#!/usr/bin/env python
"""LiSiam ground-truth forgery masks (SSIM or DIFF) for a prepared dataset directory (resumable).

Each fake crop is compared with the same frame of its target real video (FF++:
``<Method>/<target>_<source>`` or ``<Method>/<target>`` -> ``real/<target>``, same frame
index); one 0/255 PNG per fake goes to ``--out`` (default ``<data>/masks_ssim``,
``masks_ssim_literal`` or ``masks_diff``), reals get none (all zero). The manifest is
rewritten with ``forgery_mask`` on every paired fake. Rerunning resumes: complete masks
are kept. The fake and real crops must be cut with the same box: see
``sjedd_jax/data/masks.py``.

    python scripts/make_masks.py --data /data/ffpp_c23_crops                 # SSIM, dissimilarity rule
    python scripts/make_masks.py --data /data/ffpp_c23_crops --kind diff     # Table VII ablation
    python scripts/make_masks.py --data /data/synth --rule literal --skip-unpaired
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from sjedd_jax.data import manifest  # pylint: disable=g-import-not-at-top,wrong-import-position
from sjedd_jax.data import masks  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--data", required=True, help="prepared dataset directory (manifest.jsonl)")
  ap.add_argument("--out", default=None, help="mask folder (default: inside --data, masks_<kind>[_literal])")
  ap.add_argument("--kind", choices=masks.KINDS, default="ssim")
  ap.add_argument("--rule", choices=masks.RULES, default="dissimilarity",
                  help="SSIM rule: dissimilarity 255*(1-S) > t (default) or literal 255*S <= t")
  ap.add_argument("--threshold", type=float, default=None, help="default: 20 (ssim) or 0.1 (diff)")
  ap.add_argument("--skip-unpaired", action="store_true",
                  help="leave fakes with no real frame without a mask (listed in <out>/unpaired.jsonl)")
  ap.add_argument("--max-jaw-shift", type=float, default=None,
                  help="refuse pairs whose jaw landmarks differ by more than this fraction of the crop side "
                       "(crops cut from different boxes)")
  ap.add_argument("--splits", default=None, help="comma-separated splits whose fakes get masks (default: all)")
  ap.add_argument("--workers", type=int, default=0, help="processes (0: this process)")
  ap.add_argument("--no-progress", action="store_true")
  args = ap.parse_args(argv)
  if not os.path.isdir(args.data):
    print(f"error: dataset directory {args.data!r} not found", file=sys.stderr)
    return 2
  try:
    summary = masks.run(args.data, args.out, kind=args.kind, rule=args.rule, threshold=args.threshold,
                        skip_unpaired=args.skip_unpaired, max_jaw_shift=args.max_jaw_shift,
                        workers=args.workers, progress=not args.no_progress,
                        splits=None if args.splits is None else [s for s in args.splits.split(",") if s])
  except (masks.MaskError, manifest.ManifestError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(summary.line())
  print(f"manifest updated: {os.path.join(args.data, manifest.MANIFEST)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
