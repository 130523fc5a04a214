#!/usr/bin/env python
"""Input pipeline throughput (images/s) for grain worker counts.

  python scripts/benchmark_pipeline.py                       # 256 generated 317x317 PNGs in a temp dir
  python scripts/benchmark_pipeline.py --data /data/ffpp_crops --workers 0 4 8 --batches 50

Times the training stream (decode, perturbation, bicubic resize, normalisation,
batching) after a warm-up batch (worker start-up is excluded and reported apart).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # pylint: disable=g-import-not-at-top
import numpy as np

from sjedd_jax.data import manifest, pipeline, videos


def make_dataset(directory: str, n: int, size: int = 317, seed: int = 0) -> None:
  """``n`` face-crop-sized PNGs (smooth random texture, so PNG decoding costs what it
  does on photos) and a manifest, all in the train split."""
  rng = np.random.default_rng(seed)
  os.makedirs(os.path.join(directory, "img"), exist_ok=True)
  recs = []
  for i in range(n):
    small = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    img = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    img = np.clip(img.astype(np.int16) + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    path = f"img/{i:05d}.png"
    videos.write_image(os.path.join(directory, path), img)
    src = ("real", "Deepfakes", "Face2Face", "aug_eye")[i % 4]
    recs.append(manifest.Record(path=path, source=src, is_fake=int(src != "real"),
                                video_id=f"v{i // 8}", split="train"))
  manifest.write(directory, recs, {"name": "benchmark", "hierarchy": "ffpp", "image_size": size})


def bench(cfg: pipeline.DataConfig, data: pipeline.Data, batches: int) -> tuple[float, float]:
  """Steady-state images/s, and seconds to the first batch.

  The batches buffered while the first one was made are drained before timing, so
  the rate is what the pipeline sustains, not what its buffers hold.
  """
  t0 = time.perf_counter()
  it = iter(pipeline.train_dataset(cfg, data))
  next(it)
  startup = time.perf_counter() - t0
  drain = cfg.prefetch_batches + cfg.read_threads + cfg.workers * (cfg.worker_buffer_size + 1)
  for _ in range(drain):
    next(it)
  t0 = time.perf_counter()
  for _ in range(batches):
    next(it)
  return batches * cfg.batch_size / (time.perf_counter() - t0), startup


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", help="a prepared dataset directory (default: generate one)")
  p.add_argument("--num-images", type=int, default=256)
  p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--batches", type=int, default=12, help="timed batches (after warm-up)")
  p.add_argument("--threads", type=int, default=2, help="read threads per process")
  p.add_argument("--image-size", type=int, default=224)
  p.add_argument("--perturb", type=float, default=0.3, help="perturbation probability")
  args = p.parse_args(argv)
  tmp = None
  if args.data is None:
    tmp = tempfile.TemporaryDirectory()
    args.data = tmp.name
    t0 = time.perf_counter()
    make_dataset(args.data, args.num_images)
    print(f"generated {args.num_images} 317x317 PNGs in {time.perf_counter() - t0:.1f}s")
  base = pipeline.DataConfig(data_dir=args.data, batch_size=args.batch_size, image_size=args.image_size,
                             perturb_probability=args.perturb, read_threads=args.threads)
  data = pipeline.load(base)
  print(f"{len(data)} records, batch {args.batch_size}, {args.image_size}px, "
        f"{args.threads} read threads per process, {os.cpu_count()} CPUs")
  for w in args.workers:
    cfg = pipeline.DataConfig(**{**base.__dict__, "workers": w})
    rate, startup = bench(cfg, data, args.batches)
    print(f"workers={w}: {rate:8.1f} images/s  (first batch after {startup:.1f}s)")
  if tmp is not None:
    tmp.cleanup()


if __name__ == "__main__":
  main()
