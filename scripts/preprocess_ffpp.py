#!/usr/bin/env python
"""Face crops + 68 landmarks + manifest from FF++ or real/fake folders (resumable).

FF++ (official split files):
  python scripts/preprocess_ffpp.py --layout ffpp --root /data/FaceForensics++ \
      --splits /data/ffpp_splits --out /data/ffpp_c23_crops --workers 16
  (--splits is a folder holding train.json/val.json/test.json, or give
   --split-file train=PATH --split-file val=PATH --split-file test=PATH)

Test sets:
  python scripts/preprocess_ffpp.py --layout folders --real /data/CDF/Celeb-real \
      --real /data/CDF/YouTube-real --fake /data/CDF/Celeb-synthesis --out /data/cdf_crops
  python scripts/preprocess_ffpp.py --layout list --list cdf_test.csv --out /data/cdf_crops

Rerunning the same command resumes; see docs/data.md.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sjedd_jax.data import faces  # pylint: disable=g-import-not-at-top
from sjedd_jax.data import preprocess


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--layout", choices=("ffpp", "folders", "list"), default="ffpp")
  p.add_argument("--out", required=True, help="output dataset directory")
  g = p.add_argument_group("ffpp layout")
  g.add_argument("--root", help="FF++ root (holding original_sequences/, manipulated_sequences/)")
  g.add_argument("--splits", help="folder with the official train.json, val.json, test.json")
  g.add_argument("--split-file", action="append", default=[], metavar="SPLIT=PATH")
  g.add_argument("--methods", nargs="+", default=list(preprocess.FFPP_METHODS))
  g.add_argument("--compression", default="c23", help="c0 (raw), c23 or c40")
  g.add_argument("--default-split", choices=("train", "val", "test"),
                 help="split for videos in no split file (default: leave them out)")
  g = p.add_argument_group("folders / list layouts")
  g.add_argument("--real", action="append", default=[], help="folder of real videos/images (repeatable)")
  g.add_argument("--fake", action="append", default=[], help="folder of fake videos/images (repeatable)")
  g.add_argument("--fake-source", default="fake", help="source name written for fakes")
  g.add_argument("--list", help="CSV: path,label[,video_id,split,source,identity]")
  g.add_argument("--split", default="test", choices=("train", "val", "test"))
  g = p.add_argument_group("processing")
  g.add_argument("--num-frames", type=int, default=32, help="frames per video, evenly spaced (0: all)")
  g.add_argument("--scale", type=float, default=1.3)
  g.add_argument("--size", type=int, default=317, help="saved crop side (0: native)")
  g.add_argument("--format", choices=("png", "jpg"), default="png")
  g.add_argument("--jpeg-quality", type=int, default=95)
  g.add_argument("--upsample", type=int, default=1, help="dlib detector upsampling")
  g.add_argument("--max-side", type=int, default=640,
                 help="detect faces on frames shrunk to this side (landmarks use full frames; 0: no shrink)")
  g.add_argument("--workers", type=int, default=os.cpu_count() or 1)
  g.add_argument("--retry-failed", action="store_true", help="rerun videos that failed before")
  g.add_argument("--limit", type=int, default=0, help="only the first N videos (a trial run)")
  g.add_argument("--name", help="dataset name in dataset.json (default: --out's basename)")
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  pre_skips = []
  if args.layout == "ffpp":
    if not args.root:
      sys.exit("--layout ffpp needs --root")
    split_files = dict(s.split("=", 1) for s in args.split_file)
    if args.splits and not os.path.isdir(args.splits):
      print(f"error: --splits {args.splits!r} does not exist (a directory with FF++'s official train.json, "
            "val.json and test.json)", file=sys.stderr)
      return 2
    for name, path in split_files.items():
      if not os.path.exists(path):
        print(f"error: --split_file {name}={path!r} does not exist", file=sys.stderr)
        return 2
    if args.splits:
      for s in ("train", "val", "test"):
        path = os.path.join(args.splits, f"{s}.json")
        if os.path.exists(path):
          split_files.setdefault(s, path)
    tasks, pre_skips = preprocess.ffpp_tasks(args.root, split_files or None, args.methods,
                                             args.compression, default_split=args.default_split)
  elif args.layout == "folders":
    if not (args.real or args.fake):
      sys.exit("--layout folders needs --real and/or --fake folders")
    tasks = preprocess.folder_tasks(args.real, args.fake, args.split, fake_source=args.fake_source,
                                    num_frames=args.num_frames)
  else:
    if not args.list:
      sys.exit("--layout list needs --list FILE")
    tasks = preprocess.list_tasks(args.list, args.split, args.num_frames)
  if args.limit:
    tasks = tasks[:args.limit]
  cfg = preprocess.PreprocessConfig(num_frames=args.num_frames, scale=args.scale, size=args.size or None,
                                    image_format=args.format, jpeg_quality=args.jpeg_quality,
                                    workers=args.workers, retry_failed=args.retry_failed)
  meta = {"name": args.name} if args.name else None
  summary = preprocess.run(tasks, args.out, cfg, detector_factory=_DlibFactory(args.upsample, args.max_side or None),
                           metadata=meta, skipped=pre_skips)
  print(summary.line())
  print(f"manifest: {os.path.join(args.out, 'manifest.jsonl')}; skipped: {os.path.join(args.out, 'skipped.jsonl')}")


class _DlibFactory:
  """Picklable detector factory: builds dlib's objects inside each worker."""

  def __init__(self, upsample, max_side):
    self.upsample, self.max_side = upsample, max_side

  def __call__(self):
    return faces.DlibDetector(upsample=self.upsample, max_side=self.max_side)


if __name__ == "__main__":
  sys.exit(main())
