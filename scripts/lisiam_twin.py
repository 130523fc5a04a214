r"""LiSiam's synthetic twin (spec lisiam.md section 9): train the runs, evaluate them under degradations.

    python scripts/lisiam_twin.py --root /tmp/lisiam_twin                 # (i) LiSiam only
    python scripts/lisiam_twin.py --root /tmp/lisiam_twin --runs i,ii,iii,iv,v --out /tmp/lisiam_twin/table.md

Runs (same world, same budget: configs/lisiam/synthetic.py, 600 steps of batch 16; ``--arg spec``:
the spec's 1000 steps of batch 32 and OCR widths):

* (i)   LiSiam (model A);
* (ii)  one branch, L_cls only, on the IQD-degraded view ("Xception + IQD": variant E with the
        weights (1, 0, 0, 0); the network is LiSiam's, its segmentation head untrained);
* (iii) model G (one branch over clean and degraded views, L_seg + L_cls + aux, no L_li);
* (iv)  lambda_li = 0 (model A's two branches without the invariance loss).

Each run trains in ``ROOT/<run>`` with ``sjedd_jax.train`` (a finished run is reused), then
its best checkpoint is evaluated on the identity-disjoint test split, clean and under each
condition: JPEG q 20 (a seen type), Gaussian blur sigma 1.5 (an unseen severity; the IQD
draws sigma < 1), ``perturb`` noise level 2 (an unseen type) and pixelate level 2 (factor 3).
Per condition: frame and video AUC, pixel IoU/F1 on fakes and the pixel AUC against the
oracle masks, the predicted fake area on reals, and the view consistency: mean |P(fake) map
of the clean image - that of the degraded one|. L_li over training comes from the run's
``metrics.jsonl``: the first logged value, the means of the first and the last five, and the
peak of the five-point running mean (the maps start flat, so L_li first rises as they form).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
RUNS = {
    "i": ("LiSiam (A)", {}),
    "ii": ("one branch, cls only, IQD (Xception+IQD)", {"lisiam.variant": "E", "weighting.fixed": (1.0, 0.0, 0.0, 0.0)}),
    "iii": ("model G", {"lisiam.variant": "G"}),
    "iv": ("lambda_li = 0", {"weighting.fixed": (1.0, 1.0, 0.0, 0.4)}),
    # configs/lisiam/ablations/bilevel.py on the twin (spec 10): lambda learned from (1, 1, 1, 0.4).
    "v": ("bi-level weights", {"weighting.kind": "bilevel", "weighting.update_every": 4}),
}
CONDITIONS = ("clean", "jpeg_q20", "blur_s1.5", "noise_2", "pixelate_3")


class Degraded:
  """An evaluation transform: one test-time degradation of the face, then the detector's transform."""

  def __init__(self, base, condition: str):
    self.base, self.condition = base, condition

  def __call__(self, image, rec, data_dir, rng, train):
    from sjedd_jax.data import degrade, perturb  # pylint: disable=g-import-not-at-top
    c = self.condition
    seeded = np.random.default_rng(zlib.crc32(rec.path.encode()))
    if c == "jpeg_q20":
      image = degrade.jpeg(image, 20)
    elif c == "blur_s1.5":
      image = degrade.gaussian_blur(image, 1.5)
    elif c == "noise_2":
      image = perturb.apply(image, "noise", 2, seeded)
    elif c == "pixelate_3":
      image = perturb.apply(image, "pixelate", 2, seeded)    # factor 3
    elif c != "clean":
      raise ValueError(f"unknown condition {c!r}; expected one of {CONDITIONS}")
    return self.base(image, rec, data_dir, rng, train)


def config_of(run: str, steps: int | None, arg: str | None = None, sets: list[str] | None = None):
  from sjedd_jax import config as config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.load_config_file(os.path.join(CONFIGS, "lisiam", "synthetic.py"), arg or None)
  for k, v in RUNS[run][1].items():
    config_lib.set_dotted(c, k, v)
  for item in sets or ():
    key, _, text = item.partition("=")
    config_lib.parse_dotted(c, key.strip(), text.strip())
  if steps:
    c.total_steps = steps
    c.eval_every = c.ckpt_every = max(1, steps // 2)
    c.optim.warmup_steps = min(c.optim.warmup_steps, max(1, steps // 10))
  return c


def collect(evaluator, cfg, variables) -> dict[str, np.ndarray]:
  """Every test image's outputs and labels, in manifest order."""
  from sjedd_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  parts: dict[str, list] = {}
  for batch in pipeline.eval_iterator(cfg):
    out = evaluator.predict(variables, batch["image"])
    keep = np.asarray(batch["valid"]).astype(bool)
    for k, v in {**{k: batch[k] for k in ("index", "is_fake", "video", "mask")}, **out}.items():
      parts.setdefault(k, []).append(np.asarray(v)[keep])
  a = {k: np.concatenate(v) for k, v in parts.items()}
  order = np.argsort(a["index"])
  return {k: v[order] for k, v in a.items()}


def evaluate_run(config, workdir: str, data_dir: str) -> dict:
  from sjedd_jax import evaluator as evaluator_lib, inference, metrics  # pylint: disable=g-import-not-at-top
  from sjedd_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from sjedd_jax.detectors.lisiam import metrics as lmetrics  # pylint: disable=g-import-not-at-top
  detector, variables = inference.load(config=config, workdir=workdir, checkpoint="best")
  ev = evaluator_lib.Evaluator(detector)
  base = datasets.data_config(config, detector, data_dir, "test", train=False)
  out, clean = {}, None
  for cond in CONDITIONS:
    a = collect(ev, dataclasses.replace(base, transform=Degraded(detector.transform, cond)), variables)
    r = metrics.evaluate_predictions(a["p_fake"], a["is_fake"], a["video"])
    loc = lmetrics.localisation(a["mask_prob"], a["mask"], a["is_fake"])
    row = {"frame_auc": r["frame"]["auc"], "frame_acc": r["frame"]["acc"],
           "video_auc": (r.get("video") or {}).get("auc"),
           "video_vote_acc": lmetrics.video_vote_accuracy(a["p_fake"], a["is_fake"], a["video"]), **loc}
    if cond == "clean":
      clean = a
    else:
      row["view_consistency"] = lmetrics.view_consistency(clean["mask_prob"], a["mask_prob"])
    out[cond] = row
  return out


def li_trend(workdir: str) -> dict:
  vals = []
  path = os.path.join(workdir, "metrics.jsonl")
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        d = json.loads(line)
        if "loss/li" in d and d["loss/li"] is not None:
          vals.append((d.get("step"), d["loss/li"]))
  if len(vals) < 2:
    return {}
  v = np.asarray([x for _, x in vals], np.float64)
  smooth = np.convolve(v, np.ones(5) / 5, mode="valid") if len(v) >= 5 else v
  first, last = float(np.mean(v[:5])), float(np.mean(v[-5:]))
  peak = int(np.argmax(smooth))
  return {"first": float(v[0]), "first5": first, "last5": last, "falls": last < first,
          "peak5": float(smooth[peak]), "peak_step": vals[peak + min(2, len(v) - 1)][0],
          "falls_from_peak": last < float(smooth[peak]), "points": len(vals),
          "trajectory": [(s, round(float(x), 4)) for s, x in vals]}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--root", required=True, help="one workdir per run under it")
  ap.add_argument("--runs", default="i", help=f"comma list of {list(RUNS)}")
  ap.add_argument("--steps", type=int, default=0, help="override total_steps (0: the config's)")
  ap.add_argument("--arg", default="", help='the config\'s arg ("spec": spec section 9\'s widths and schedule)')
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="config overrides, e.g. --set data.cache_dir=/tmp/world (repeatable)")
  ap.add_argument("--out", default="", help="write the table (markdown) here; JSON next to it")
  args = ap.parse_args(argv)
  runs = [r.strip() for r in args.runs.split(",") if r.strip()]
  bad = [r for r in runs if r not in RUNS]
  if bad:
    ap.error(f"unknown run(s) {bad}; expected among {list(RUNS)}")
  from sjedd_jax import train  # pylint: disable=g-import-not-at-top
  from sjedd_jax.data import datasets  # pylint: disable=g-import-not-at-top
  results = {}
  for run in runs:
    config = config_of(run, args.steps or None, args.arg, args.set)
    workdir = os.path.join(args.root, run)
    t0 = time.time()
    data_dir = datasets.dataset_dir(config)
    t_data = time.time() - t0
    t0 = time.time()
    final = train.run(config, workdir, progress=True)
    t_train = time.time() - t0
    t0 = time.time()
    ev = evaluate_run(config, workdir, data_dir)
    results[run] = {"name": RUNS[run][0], "conditions": ev, "li": li_trend(workdir), "data_s": t_data,
                    "train_s": t_train, "train_wall_s": final.get("wall_time_s"), "eval_s": time.time() - t0,
                    "steps": config.total_steps}
    print(json.dumps({run: results[run]}, indent=1, default=lambda x: None), flush=True)
  header = (f"{datetime.date.today().isoformat()}, {platform.node()} ({os.cpu_count()} CPUs), load "
            f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; python scripts/lisiam_twin.py --runs {args.runs}"
            + (f" --arg {args.arg}" if args.arg else ""))
  lines = [header, "", "| run | condition | frame AUC | video AUC | IoU (fakes) | F1 | pixel AUC | fake area (reals) "
           "| consistency |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
  f = lambda x: "n/a" if x is None else f"{x:.3f}"
  for run, r in results.items():
    for cond, row in r["conditions"].items():
      lines.append(f"| ({run}) {r['name']} | {cond} | {f(row['frame_auc'])} | {f(row['video_auc'])} | {f(row['iou'])} "
                   f"| {f(row['f1'])} | {f(row['pixel_auc'])} | {f(row['fake_area_real'])} "
                   f"| {f(row.get('view_consistency'))} |")
  text = "\n".join(lines)
  print(text)
  if args.out:
    with open(args.out, "w") as fh:
      fh.write(text + "\n")
    with open(os.path.splitext(args.out)[0] + ".json", "w") as fh:
      json.dump(results, fh, indent=2, default=lambda x: None)


if __name__ == "__main__":
  main()
