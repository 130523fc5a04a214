#!/usr/bin/env python
"""Generates the sequential-deepfake synthetic world (spec mil_ranking.md section 9); optionally probes it.

    python scripts/make_seq_synthetic.py --out data/seq_synth                # 160 x 6 x 4 = 3840 images
    python scripts/make_seq_synthetic.py --out data/seq_synth --probe        # check 9(a), no learning

The probe (spec 9(a); held-out test split unless ``--probe_split``) reports:

* the order cue: per edited region (true masks ``masks/<identity>.npz``, final edit weight
  >= 0.5), the std of the high-pass residual (image minus its 3x3 median); ranking the
  components of each image by it (higher noise = earlier edit under ``order_cue=regeneration``,
  lower under ``strength``) gives the pairwise order accuracy (target >= 0.95). Also with the
  "hp2" estimator (the residual minus the mean of its 4 neighbours) and the mean residual std
  by the number of noise passes an edited region received;
* real/fake AUC of logistic regressions (trained on train+val) on the per-image mean colour
  (target ~0.5) and on the global residual std (for information);
* Fixed-Acc / Adaptive-Acc of the all-original predictor on the split and the expected
  value on the mix (spec: 0.611 / 0.114).
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

from sjedd_jax.data import manifest  # pylint: disable=g-import-not-at-top,wrong-import-position
from sjedd_jax.data import regions as regions_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from sjedd_jax.data import synthetic_seq  # pylint: disable=g-import-not-at-top,wrong-import-position
from sjedd_jax.detectors.mil_ranking import labels as seq_labels  # pylint: disable=g-import-not-at-top,wrong-import-position
from sjedd_jax.detectors.mil_ranking import metrics as seq_metrics  # pylint: disable=g-import-not-at-top,wrong-import-position


def load_rgb(d: str, rec: manifest.Record) -> np.ndarray:
  img = cv2.imread(os.path.join(d, rec.path))
  if img is None:
    raise FileNotFoundError(f"{os.path.join(d, rec.path)}: cannot read the image")
  return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def order_cue_probe(d: str, recs: list[manifest.Record], order_cue: str, threshold: float = 0.5) -> dict:
  """Pairwise order accuracy of per-region residual noise levels (true masks), and the noise by passes."""
  sign = 1.0 if order_cue == "regeneration" else -1.0
  cache: dict = {}
  scores = {"std": [], "hp2": []}
  padded, by_passes = [], collections.defaultdict(list)
  empty = 0
  for rec in recs:
    if not rec.sequence:
      continue
    img = load_rgb(d, rec)
    w = synthetic_seq.read_component_masks(d, rec, cache)
    for est in scores:
      s = synthetic_seq.region_noise_std(img, w, threshold, est)
      scores[est].append(sign * s)
      if est == "std":
        k = len(rec.sequence)
        for j, c in enumerate(rec.sequence, 1):
          n = k - j + 1 if order_cue == "regeneration" else j
          empty += int(not np.isfinite(s[c - 1]))
          by_passes[n].append(s[c - 1])
    padded.append(seq_labels.pad(rec.sequence))
  padded = np.asarray(padded, np.int64)
  out = {f"pairwise_order_acc_{est}": seq_metrics.pairwise_order_acc(np.nan_to_num(np.asarray(v), nan=-np.inf),
                                                                     padded) for est, v in scores.items()}
  out["num_edited_images"] = int(len(padded))
  out["num_pairs"] = int(sum(len(s) * (len(s) - 1) // 2 for s in (r.sequence for r in recs) if s))
  out["regions_without_pixels"] = empty
  out["residual_std_by_passes"] = {int(n): round(float(np.nanmean(v)), 2) for n, v in sorted(by_passes.items())}
  return out


def untouched_std(d: str, recs: list[manifest.Record], threshold: float = 0.5) -> dict[str, float]:
  """Mean residual std of the real images inside each component's region (from their landmarks)."""
  out = collections.defaultdict(list)
  for rec in recs:
    if rec.sequence:
      continue
    img = load_rgb(d, rec)
    lm = np.asarray(rec.landmarks, np.float32)
    scale = regions_lib.face_size(lm)
    w = np.stack([synthetic_seq.component_mask(c, (lm,), img.shape, scale, synthetic_seq.EDIT["dilate"],
                                               synthetic_seq.EDIT["blur"]) for c in synthetic_seq.COMPONENTS])
    for c, s in zip(synthetic_seq.COMPONENTS, synthetic_seq.region_noise_std(img, w, threshold)):
      out[c].append(s)
  return {c: round(float(np.nanmean(v)), 2) for c, v in out.items()}


def colour_and_noise_auc(d: str, train: list[manifest.Record], test: list[manifest.Record]) -> dict[str, float]:
  """Held-out real/fake AUC of logistic regressions on the mean colour and on the global residual std."""
  from sklearn.linear_model import LogisticRegression  # pylint: disable=g-import-not-at-top
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top

  def feats(recs):
    colour, noise = [], []
    for r in recs:
      img = load_rgb(d, r)
      colour.append(img.reshape(-1, 3).mean(0) / 255.0)
      noise.append([np.log(synthetic_seq.noise_residual(img).std() + 1e-6)])
    return np.asarray(colour), np.asarray(noise)

  (ctr, ntr), (cte, nte) = feats(train), feats(test)
  ytr, yte = np.array([r.is_fake for r in train]), np.array([r.is_fake for r in test])
  out = {}
  for name, a, b in (("mean_colour_auc", ctr, cte), ("global_noise_auc", ntr, nte)):
    mu, sd = a.mean(0), a.std(0) + 1e-6
    clf = LogisticRegression(max_iter=2000, class_weight="balanced").fit((a - mu) / sd, ytr)
    out[name] = float(roc_auc_score(yte, clf.predict_proba((b - mu) / sd)[:, 1]))
  return out


def all_original(recs: list[manifest.Record]) -> dict[str, float]:
  true = np.asarray([seq_labels.pad(r.sequence or []) for r in recs], np.int64)
  pred = np.zeros_like(true)
  return dict(fixed_acc=seq_metrics.fixed_acc(pred, true), adaptive_acc=seq_metrics.adaptive_acc(pred, true))


def probe(d: str, split: str = "test", log=print) -> dict:
  """The section-9(a) checks on the dataset directory ``d`` (a dict of numbers)."""
  meta = manifest.read_metadata(d)
  params = meta.get("generator", {}).get("params", {})
  order_cue = params.get("order_cue", "regeneration")
  recs = manifest.read(d)
  test = [r for r in recs if r.split == split]
  train = [r for r in recs if r.split != split]
  res = dict(split=split, order_cue=order_cue, sigma_g=params.get("sigma_g"), test_images=len(test))
  t = time.time()
  res.update(order_cue_probe(d, test, order_cue))
  res["untouched_std_real"] = untouched_std(d, test)
  log(f"  order cue ({order_cue}): pairwise order accuracy std {res['pairwise_order_acc_std']:.3f}, "
      f"hp2 {res['pairwise_order_acc_hp2']:.3f} over {res['num_pairs']} pairs of {res['num_edited_images']} edited "
      f"images; residual std by passes {res['residual_std_by_passes']}; real regions {res['untouched_std_real']}")
  res.update(colour_and_noise_auc(d, train, test))
  log(f"  logistic regression real/fake AUC: mean colour {res['mean_colour_auc']:.3f}, "
      f"global residual std {res['global_noise_auc']:.3f}")
  res["all_original_split"] = all_original(test)
  res["all_original_world"] = all_original(recs)
  types = meta.get("sequence_types") or synthetic_seq.sequence_types(params.get("types_seed", 0))
  p_orig = 1.0 / (1 + params.get("edited_per_frame", 3))
  res["all_original_expected"] = synthetic_seq.expected_all_original(types, p_orig)
  log("  all-original predictor Fixed / Adaptive: " + ", ".join(
      f"{k} {res['all_original_' + k]['fixed_acc']:.3f} / {res['all_original_' + k]['adaptive_acc']:.3f}"
      for k in ("split", "world", "expected")))
  res["probe_seconds"] = round(time.time() - t, 1)
  return res


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--out", required=True, help="dataset directory to create (reused if complete)")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--num_identities", type=int, default=160)
  ap.add_argument("--frames", type=int, default=6, help="camera frames per identity")
  ap.add_argument("--edited", type=int, default=3, help="edited images per frame (besides the real one)")
  ap.add_argument("--image_size", type=int, default=64)
  ap.add_argument("--sigma_g", type=float, default=synthetic_seq.SIGMA_G, help="sigma of one regeneration pass")
  ap.add_argument("--order_cue", default="regeneration", choices=synthetic_seq.ORDER_CUES)
  ap.add_argument("--types_seed", type=int, default=0, help="seed of the 27 sequence types")
  ap.add_argument("--workers", type=int, default=None)
  ap.add_argument("--probe", action="store_true", help="run the section-9(a) checks")
  ap.add_argument("--probe_split", default="test", choices=manifest.SPLITS)
  ap.add_argument("--json", default=None, help="also write the probe's numbers to this file")
  args = ap.parse_args(argv)
  t = time.time()
  d = synthetic_seq.generate(args.out, seed=args.seed, num_identities=args.num_identities,
                             frames_per_identity=args.frames, edited_per_frame=args.edited,
                             image_size=args.image_size, sigma_g=args.sigma_g, order_cue=args.order_cue,
                             types_seed=args.types_seed, workers=args.workers)
  gen_seconds = time.time() - t
  recs = manifest.read(d)
  counts = collections.Counter(r.split for r in recs)
  lengths = collections.Counter(len(r.sequence or []) for r in recs)
  print(f"generated in {gen_seconds:.1f}s: {d}: {len(recs)} images; splits {dict(sorted(counts.items()))}; "
        f"sequence lengths {dict(sorted(lengths.items()))}")
  if args.probe:
    res = dict(generation_seconds=round(gen_seconds, 1), **probe(d, args.probe_split))
    print(json.dumps(res))
    if args.json:
      with open(args.json, "w") as f:
        json.dump(res, f, indent=2)
  return 0


if __name__ == "__main__":
  sys.exit(main())
