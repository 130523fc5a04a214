#!/usr/bin/env python
"""Generates (and expands) the synthetic face-forgery world; optionally probes its learnability.

    python scripts/make_synthetic.py --out data/synth --num_identities 120 --expressions 8
    python scripts/make_synthetic.py --out data/synth --probe      # baselines + tiny ViT AUC

The probe (needs jax/flax/optax) trains on train+val and reports held-out (test
split) frame AUC, real vs the four forgery sources, for: logistic regression on
the per-image mean colour, logistic regression on global high-frequency energy
(log Laplacian variance and mean |Laplacian|), and a tiny ViT (64 px, patch 8,
3 layers, width 96) trained from scratch with balanced batches of 32.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import cv2  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from sjedd_jax.data import expand as expand_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from sjedd_jax.data import manifest  # pylint: disable=g-import-not-at-top,wrong-import-position
from sjedd_jax.data import synthetic  # pylint: disable=g-import-not-at-top,wrong-import-position

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32)
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32)


def load_images(d, recs, size):
  out = np.empty((len(recs), size, size, 3), np.uint8)
  for i, r in enumerate(recs):
    img = cv2.cvtColor(cv2.imread(os.path.join(d, r.path)), cv2.COLOR_BGR2RGB)
    out[i] = img if img.shape[0] == size else cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
  return out


def baselines(xtr, ytr, xte, yte):
  """Held-out AUCs of logistic regressions on global per-image statistics."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top

  def mean_colour(x):
    return x.reshape(len(x), -1, 3).mean(1) / 255.0

  def highfreq(x):
    lap = np.stack([cv2.Laplacian(g, cv2.CV_32F) for g in x.astype(np.float32).mean(-1)])
    return np.stack([np.log(lap.var((1, 2)) + 1e-6), np.log(np.abs(lap).mean((1, 2)) + 1e-6)], 1)

  out = {}
  for name, f in (("mean_colour", mean_colour), ("global_highfreq", highfreq)):
    a, b = f(xtr), f(xte)
    mu, sd = a.mean(0), a.std(0) + 1e-6
    clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit((a - mu) / sd, ytr)
    out[name] = float(roc_auc_score(yte, clf.predict_proba((b - mu) / sd)[:, 1]))
  return out


def vit_probe(xtr, ytr, xte, *, steps=800, batch=32, width=96, depth=3, heads=4, patch=8, lr=1e-3, seed=0,
              log=print):
  """Trains a tiny pre-LN ViT (CLIP-like: class token, ln_pre) from scratch; returns test scores."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top

  class Block(nnx.Module):

    def __init__(self, rngs):
      self.ln1, self.ln2 = nnx.LayerNorm(width, rngs=rngs), nnx.LayerNorm(width, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(heads, width, decode=False, rngs=rngs)
      self.fc1, self.fc2 = nnx.Linear(width, 4 * width, rngs=rngs), nnx.Linear(4 * width, width, rngs=rngs)

    def __call__(self, x):
      x = x + self.attn(self.ln1(x))
      return x + self.fc2(jax.nn.gelu(self.fc1(self.ln2(x))))

  class ViT(nnx.Module):

    def __init__(self, size, rngs):
      n = (size // patch) ** 2
      self.embed = nnx.Conv(3, width, (patch, patch), strides=(patch, patch), use_bias=False, rngs=rngs)
      self.cls = nnx.Param(jax.random.normal(rngs.params(), (1, 1, width)) * 0.02)
      self.pos = nnx.Param(jax.random.normal(rngs.params(), (1, n + 1, width)) * 0.02)
      self.ln_pre, self.ln = nnx.LayerNorm(width, rngs=rngs), nnx.LayerNorm(width, rngs=rngs)
      self.blocks = nnx.List([Block(rngs) for _ in range(depth)])
      self.head = nnx.Linear(width, 1, rngs=rngs)

    def __call__(self, x):
      x = self.embed(x)
      b = x.shape[0]
      x = x.reshape(b, -1, width)
      x = jnp.concatenate([jnp.broadcast_to(self.cls[...], (b, 1, width)), x], 1) + self.pos[...]
      x = self.ln_pre(x)
      for blk in self.blocks:
        x = blk(x)
      return self.head(self.ln(x[:, 0]))[:, 0]

  def norm(x):
    return (x.astype(np.float32) / 255.0 - CLIP_MEAN) / CLIP_STD

  model = ViT(xtr.shape[1], nnx.Rngs(seed))
  sched = optax.warmup_cosine_decay_schedule(0.0, lr, min(50, steps // 10), steps)
  opt = nnx.Optimizer(model, optax.adamw(sched, weight_decay=0.05), wrt=nnx.Param)

  @nnx.jit
  def train_step(model, opt, x, y):
    loss, grads = nnx.value_and_grad(lambda m: optax.sigmoid_binary_cross_entropy(m(x), y).mean())(model)
    opt.update(model, grads)
    return loss

  @nnx.jit
  def predict(model, x):
    return model(x)

  rng = np.random.default_rng(seed)
  pos, neg = np.flatnonzero(ytr == 1), np.flatnonzero(ytr == 0)
  t0 = time.time()
  for s in range(steps):
    idx = np.concatenate([rng.choice(pos, batch // 2), rng.choice(neg, batch - batch // 2)])
    x = norm(xtr[idx])
    flip = rng.uniform(size=len(idx)) < 0.5
    x[flip] = x[flip, :, ::-1]
    loss = train_step(model, opt, jnp.asarray(x), jnp.asarray(ytr[idx], jnp.float32))
    if s % 200 == 0 or s == steps - 1:
      log(f"  step {s} loss {float(loss):.3f} ({time.time() - t0:.0f}s)")
  return np.concatenate([np.asarray(predict(model, jnp.asarray(norm(xte[i:i + 256]))))
                         for i in range(0, len(xte), 256)]), time.time() - t0


def probe(d, *, steps=800, seed=0, train_aug=False, log=print):
  """Baselines and tiny-ViT held-out AUCs (dict) for the dataset directory ``d``."""
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  recs = manifest.read(d)
  test_sources = ("real",) + synthetic.FORGERY_SOURCES
  train_sources = test_sources + (tuple(expand_lib.AUG_SOURCE.values()) if train_aug else ())
  tr = [r for r in recs if r.split in ("train", "val") and r.source in train_sources]
  te = [r for r in recs if r.split == "test" and r.source in test_sources]
  size = manifest.read_metadata(d).get("image_size", 64)
  xtr, xte = load_images(d, tr, size), load_images(d, te, size)
  ytr, yte = np.array([r.is_fake for r in tr]), np.array([r.is_fake for r in te])
  res = dict(train_images=len(tr), test_images=len(te), steps=steps, train_aug=train_aug)
  res.update(baselines(xtr, ytr, xte, yte))
  log(f"  baselines: mean colour AUC {res['mean_colour']:.3f}, global high-frequency AUC {res['global_highfreq']:.3f}")
  scores, seconds = vit_probe(xtr, ytr, xte, steps=steps, seed=seed, log=log)
  res["vit"] = float(roc_auc_score(yte, scores))
  res["vit_seconds"] = round(seconds, 1)
  src = np.array([r.source for r in te])
  for s in synthetic.FORGERY_SOURCES:
    keep = (src == "real") | (src == s)
    res[f"vit_{s}"] = float(roc_auc_score(yte[keep], scores[keep]))
  log(f"  tiny ViT ({steps} steps, {seconds:.0f}s): AUC {res['vit']:.3f}; " +
      ", ".join(f"{s} {res['vit_' + s]:.3f}" for s in synthetic.FORGERY_SOURCES))
  return res


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True, help="dataset directory to create (reused if complete)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--num_identities", type=int, default=120)
  ap.add_argument("--expressions", type=int, default=8, help="frames (expressions/poses) per identity")
  ap.add_argument("--image_size", type=int, default=64)
  ap.add_argument("--no_expand", action="store_true", help="skip the section-7 expansion")
  ap.add_argument("--per_region", type=int, default=None)
  ap.add_argument("--workers", type=int, default=None)
  ap.add_argument("--probe", action="store_true", help="report baseline and tiny-ViT AUCs")
  ap.add_argument("--probe_steps", type=int, default=800)
  ap.add_argument("--probe_seed", type=int, default=0)
  ap.add_argument("--probe_train_aug", action="store_true", help="also train the probe on aug_* fakes")
  args = ap.parse_args(argv)
  try:
    synthetic.default_params(seed=args.seed, num_identities=args.num_identities,
                             expressions_per_identity=args.expressions, image_size=args.image_size)
  except (ValueError, TypeError) as e:
    ap.error(str(e))
  t = time.time()
  d = synthetic.generate(args.out, seed=args.seed, num_identities=args.num_identities,
                         expressions_per_identity=args.expressions, image_size=args.image_size,
                         workers=args.workers)
  print(f"generated in {time.time() - t:.1f}s")
  if not args.no_expand:
    t = time.time()
    expand_lib.expand(d, d, seed=args.seed, per_region=args.per_region, workers=args.workers)
    print(f"expanded in {time.time() - t:.1f}s")
  counts = collections.Counter(r.source for r in manifest.read(d))
  print(f"{d}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
  if args.probe:
    res = probe(d, steps=args.probe_steps, seed=args.probe_seed, train_aug=args.probe_train_aug)
    print(json.dumps(res))
  return 0


if __name__ == "__main__":
  sys.exit(main())
