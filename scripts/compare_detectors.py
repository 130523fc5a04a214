r"""Trains every registered detector's synthetic twin under the same budget and writes docs/detectors.md.

    python scripts/compare_detectors.py --root /tmp/compare --steps 1000 --out docs/detectors.md
    python scripts/compare_detectors.py --root /tmp/compare --detectors sjedd,jedd --table_only

For each detector (``sjedd_jax.detectors.NAMES``; its package's ``SYNTHETIC_CONFIG``):

* trains the twin for ``--steps`` steps (each config's own batch size and recipe;
  validation and checkpoints at the end) in ``ROOT/<name>`` (a finished run is reused);
* times its compiled training step on random batches of the config's shape, with
  fixed loss weights (plain) and with the bi-level update on every step;
* evaluates the best checkpoint on the identity-disjoint test split, clean and
  under each perturbation of ``sjedd_jax.data.perturb`` (level 2, seeded per image);
* counts the trainable parameters and reads the detector's own metrics
  (``summarize(results)`` of its package).

Every number in the table is measured by this script on the machine it runs on;
the header says which machine, when, and with which command.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from sjedd_jax import config as config_lib, detectors, evaluator as evaluator_lib, inference, optim  # noqa: E402
from sjedd_jax import train, train_step as ts  # noqa: E402
from sjedd_jax.data import datasets, perturb  # noqa: E402

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def synthetic_config(name: str, steps: int):
  pkg = detectors.get(name)
  spec = getattr(pkg, "SYNTHETIC_CONFIG", None)
  if not spec:
    return None
  path, _, arg = spec.partition(":")
  c = config_lib.load_config_file(os.path.join(CONFIGS, path), arg or None)
  c.total_steps = steps
  c.eval_every = steps
  c.ckpt_every = steps
  c.log_every = min(c.log_every, steps)
  c.optim.warmup_steps = min(c.optim.warmup_steps, max(1, steps // 10))
  return c


def step_times(config, detector, repeats: int = 5) -> dict[str, float]:
  """ms per compiled training step, fixed weights and bi-level (lambda updated every step)."""
  out = {}
  mesh = ts.data_mesh()
  rng = np.random.default_rng(0)
  shapes = ts.abstract_batch(detector, config.batch_size, config.data.image_size)

  images = set(getattr(detector, "image_keys", None) or ("image",))

  def batch():
    # Images: N(0, 1); every other key 0/1 in its own dtype (labels, masks, "observed").
    b = {k: (rng.normal(size=v.shape) if k in images else rng.random(v.shape) < 0.5).astype(v.dtype)
         for k, v in shapes.items()}
    return ts.global_batch(b, mesh, tuple(shapes))

  for kind in ("fixed", "bilevel"):
    variables = detector.init(config.seed)   # fresh per kind: the step donates its state's buffers
    labels = detector.param_labels(variables.params) if detector.param_labels is not None else None
    opt = optim.make(config.optim, total_steps=max(config.total_steps, 1), steps_per_epoch=1,
                     params=variables.params, labels=labels)
    w = config.weighting
    weighting = ts.make_weighting(kind, num_tasks=detector.num_tasks, lam_lr=w.lam_lr, method=w.method,
                                  radius=w.radius, fixed=(1.0,) * detector.num_tasks,
                                  primary=tuple(w.get("primary") or ()) or detector.primary_weights())
    step = ts.compile_train_step(ts.make_train_step(detector, weighting, opt.tx, opt.lr, opt.weight_decay), mesh,
                                 compiler_options=detector.compiler_options)
    state = ts.shard_state(ts.init_state(variables, opt.tx, weighting, seed=config.seed), mesh)
    tb, vb = batch(), batch()
    state, m = step(state, tb, vb)           # compile + warm-up
    jax.block_until_ready(m)
    t0 = time.perf_counter()
    for _ in range(repeats):
      state, m = step(state, tb, vb)
    jax.block_until_ready(m)
    out[kind] = 1000 * (time.perf_counter() - t0) / repeats
  return out


def evaluate_all(config, workdir: str, data_dir: str) -> dict:
  detector, variables = inference.load(config=config, workdir=workdir, checkpoint="best")
  ev = evaluator_lib.Evaluator(detector)
  out = {}
  base = datasets.data_config(config, detector, data_dir, "test", train=False)
  out["clean"] = ev.run(base, variables, progress=False)
  import dataclasses  # pylint: disable=g-import-not-at-top
  for name in perturb.NAMES:
    r = ev.run(dataclasses.replace(base, eval_perturb=(name, 2)), variables, progress=False)
    out[name] = {"frame": r["frame"], "video": r["video"]}
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables.params))
  return {"results": out, "params": n_params}


def run_one(name: str, root: str, steps: int, train_missing: bool = True, retime: bool = False) -> dict | None:
  config = synthetic_config(name, steps)
  if config is None:
    return None
  workdir = os.path.join(root, name)
  cache = os.path.join(workdir, "compare.json")
  if os.path.exists(cache):
    with open(cache) as f:
      done = json.load(f)
    if done.get("steps") == steps:
      if retime:  # only the step times again (e.g. on a quieter machine)
        load0 = os.getloadavg()[0]
        done["step_ms"] = step_times(config, detectors.make(config))
        done["step_load"] = [round(load0, 1), round(os.getloadavg()[0], 1)]
        with open(cache, "w") as f:
          json.dump(done, f, indent=2, default=lambda x: None)
      return done
  if not train_missing:
    return None
  load0 = os.getloadavg()[0]
  t0 = time.time()
  final = train.run(config, workdir, progress=True)
  wall = time.time() - t0
  load1 = os.getloadavg()[0]
  if final.get("wall_time_s"):  # the run's own wall time (also right when a finished run is reused)
    wall = float(final["wall_time_s"])
  data_dir = datasets.dataset_dir(config, progress=False)
  ev = evaluate_all(config, workdir, data_dir)
  times = step_times(config, detectors.make(config))
  pkg = detectors.get(name)
  own = pkg.summarize(ev["results"]["clean"]) if hasattr(pkg, "summarize") else {}
  out = {"detector": name, "paper": pkg.PAPER, "backbone": pkg.BACKBONE, "params": ev["params"],
         "steps": steps, "batch_size": config.batch_size, "image_size": config.data.image_size,
         "train_wall_s": wall, "load": [round(load0, 1), round(load1, 1), round(os.getloadavg()[0], 1)],
         "step_ms": times,
         "frame_auc": ev["results"]["clean"]["frame"]["auc"],
         "video_auc": (ev["results"]["clean"].get("video") or {}).get("auc"),
         "perturbed_frame_auc": {k: v["frame"]["auc"] for k, v in ev["results"].items() if k != "clean"},
         "own": own, "final": {k: v for k, v in final.items() if k != "final_train_metrics"}}
  with open(cache, "w") as f:
    json.dump(out, f, indent=2, default=lambda x: None)
  return out


def _f(x, pct=True):
  if x is None or x != x:
    return "n/a"
  return f"{100 * x:.1f}" if pct else f"{x:.0f}"


def table(rows: list[dict], command: str) -> str:
  machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}"
  cpu = ""
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
  except OSError:
    pass
  lines = [
      "# Detectors compared on their synthetic twins",
      "",
      f"Measured by `{command}` on {datetime.date.today().isoformat()} ({cpu or machine}; "
      f"{jax.devices()[0].platform}). Every detector trains its own synthetic config for the same number "
      "of steps (its own batch size and recipe), is tested on the identity-disjoint test split, and again "
      "with every test image perturbed (`sjedd_jax.data.perturb`, level 2). Step times are the compiled "
      "training step on random batches of the config's shape: plain = fixed loss weights, bi-level = "
      "lambda updated on every step. AUCs in %.",
      "",
      "| detector | paper | backbone | parameters | steps x batch | step ms (plain / bi-level) | frame AUC | "
      "video AUC | " + " | ".join(f"AUC {n}" for n in perturb.NAMES) + " | own metrics |",
      "|---|---|---|---:|---:|---:|---:|---:|" + "---:|" * len(perturb.NAMES) + "---|",
  ]
  for r in rows:
    own = ", ".join(f"{k} {_f(v)}" for k, v in (r.get("own") or {}).items()) or "-"
    lines.append(
        f"| {r['detector']} | {r['paper']} | {r['backbone']} | {r['params']:,} | {r['steps']} x {r['batch_size']} | "
        f"{r['step_ms']['fixed']:.0f} / {r['step_ms']['bilevel']:.0f} | {_f(r['frame_auc'])} | {_f(r['video_auc'])} | "
        + " | ".join(_f(r["perturbed_frame_auc"].get(n)) for n in perturb.NAMES) + f" | {own} |")
  lines += ["", "Training wall time (s, including evaluation during training; in brackets the 1-minute "
            "load average at the start and end of training and after the step timing, on "
            f"{os.cpu_count()} cores): " +
            ", ".join(f"{r['detector']} {r['train_wall_s']:.0f}"
                      + (" [" + ", ".join(f"{x:g}" for x in r["load"]) + "]" if r.get("load") else "")
                      for r in rows), ""]
  lines += ["The twins are different worlds (mil_ranking: the sequential-edit world; the others the 64 px "
            "world, LiSiam with oracle masks), so compare a detector's rows with each other rather than across "
            "detectors. Each detector's own document has its twin at its own budget and its targets: "
            "[SJEDD](../README.md), [MIL ranking](mil_ranking.md), [MC-LCR](mc_lcr.md), [LiSiam](lisiam.md).", ""]
  if any(r.get("step_load") for r in rows):
    lines += ["Step times measured again with `--retime` (load average before and after): " +
              ", ".join(f"{r['detector']} [" + ", ".join(f"{x:g}" for x in r["step_load"]) + "]"
                        for r in rows if r.get("step_load")), ""]
  return "\n".join(lines)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True, help="Directory for the runs (one workdir per detector).")
  p.add_argument("--steps", type=int, default=1000, help="Training steps per detector (the same budget).")
  p.add_argument("--detectors", default="", help="Comma list (default: every registered detector).")
  p.add_argument("--out", default="", help="Write the Markdown table here (e.g. docs/detectors.md).")
  p.add_argument("--table_only", action="store_true", help="Only tabulate finished runs.")
  p.add_argument("--retime", action="store_true", help="Time the steps of finished runs again (keeps the rest).")
  args = p.parse_args(argv)
  names = [n.strip() for n in args.detectors.split(",") if n.strip()] or list(detectors.NAMES)
  unknown = [n for n in names if n not in detectors.NAMES]
  if unknown:
    print(f"error: unknown detector(s) {unknown}; registered: {sorted(detectors.NAMES)}", file=sys.stderr)
    return 2
  rows = []
  for n in names:
    r = run_one(n, args.root, args.steps, train_missing=not args.table_only, retime=args.retime)
    if r is not None:
      rows.append(r)
  command = "python scripts/compare_detectors.py " + " ".join(a for a in (argv if argv is not None else sys.argv[1:]))
  text = table(rows, command.strip())
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text)
  return 0


if __name__ == "__main__":
  sys.exit(main())
