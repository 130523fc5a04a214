r"""Runs a set of variant configs, each in its own workdir, and prints one Markdown table of test metrics.

    python scripts/run_ablations.py --steps 100 --root /tmp/sjedd_ablations
    python scripts/run_ablations.py --configs configs/ablations/cosine.py,configs/ablations/dwa.py --steps 50
    python scripts/run_ablations.py --arg "" --configs configs/ablations/frozen_text.py \
        --set data.dir=/data/ffpp_expanded --set model.pretrained=/weights/clip-vit-base-patch32

By default: the synthetic twins (``:synthetic``) of the full models (configs/synthetic.py,
configs/jedd_draft.py) and of every file in configs/ablations/. Each run lives in
``ROOT/<name>[_<arg>]_<steps>`` and is resumable: a finished run (``metrics.json``
present) is skipped, an interrupted one resumes from its checkpoint. Rows follow
the papers' tables (SJEDD VI, VII, X, XI; the JEDD draft's Table 3); columns are
the test metrics of each run's ``metrics.json``: frame and video AUC on the test
split, then every extra test set the configs define (e.g. the cross-manipulation
held-out methods with ``--set data.train_sources=Deepfakes``).
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from sjedd_jax import config as config_lib  # noqa: E402

TABLE_ORDER = ("VI", "VII", "X", "XI", "JEDD 3")
TABLE_TITLE = {"VI": "SJEDD Table VI", "VII": "SJEDD Table VII", "X": "SJEDD Table X", "XI": "SJEDD Table XI",
               "JEDD 3": "JEDD draft Table 3"}
FULL_MODELS = {"synthetic.py": ("SJEDD", "SJEDD (Ours), full model"),
               "ffpp.py": ("SJEDD", "SJEDD (Ours), full model"),
               "jedd_draft.py": ("JEDD 3", "Ours (Default): JEDD draft")}


def default_configs(arg: str | None) -> list[str]:
  full = "synthetic.py" if arg == "synthetic" else "ffpp.py"
  return ([os.path.join(ROOT, "configs", full), os.path.join(ROOT, "configs", "jedd_draft.py")]
          + sorted(glob.glob(os.path.join(ROOT, "configs", "ablations", "*.py"))))


def describe(path: str) -> tuple[str, str]:
  """(paper table, row label) of a config file (its TABLE/ROW constants, or a full model)."""
  base = os.path.basename(path)
  if base in FULL_MODELS and os.path.dirname(os.path.abspath(path)) == os.path.join(ROOT, "configs"):
    return FULL_MODELS[base]   # configs/<base> only (configs/mc_lcr/synthetic.py is another detector)
  spec = importlib.util.spec_from_file_location("describe_" + base[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return getattr(mod, "TABLE", "other"), getattr(mod, "ROW", base[:-3])


def build_config(path: str, arg: str | None, steps: int | None, sets: list[str]):
  c = config_lib.load_config_file(path, arg if os.path.basename(path) not in ("synthetic.py", "ffpp.py") else None)
  if steps and (c.total_steps or c.num_epochs):  # a zero-shot config (no steps at all) stays so
    c.total_steps = steps
    c.eval_every = steps
    c.ckpt_every = steps
    c.log_every = min(c.log_every, steps)
    c.optim.warmup_steps = min(c.optim.warmup_steps, max(1, steps // 10))
  for item in sets:
    if "=" not in item:
      raise SystemExit(f"--set {item!r}: expected key=value")
    k, v = item.split("=", 1)
    config_lib.parse_dotted(c, k.strip(), v.strip())
  return c


def run_one(path: str, arg: str | None, steps: int | None, sets: list[str], root: str, progress: bool,
            train_missing: bool = True):
  """Trains one config (or finds it finished) -> (workdir, metrics dict or None, error or None).
  With ``train_missing=False`` an unfinished run is reported, not trained."""
  from sjedd_jax import train  # pylint: disable=g-import-not-at-top
  name = os.path.basename(path)[:-3] + (f"_{arg}" if arg else "") + (f"_{steps}" if steps else "")
  workdir = os.path.join(root, name)
  metrics_path = os.path.join(workdir, "metrics.json")
  if os.path.exists(metrics_path):
    with open(metrics_path) as f:
      return workdir, json.load(f), None
  if not train_missing:
    return workdir, None, f"not finished in {workdir}"
  try:
    config = build_config(path, arg, steps, sets)
    t = time.time()
    train.run(config, workdir, progress=progress)
    print(f"  {name}: {time.time() - t:.0f} s", flush=True)
    with open(metrics_path) as f:
      return workdir, json.load(f), None
  except Exception as e:  # pylint: disable=broad-except
    traceback.print_exc()
    return workdir, None, f"{type(e).__name__}: {e}".splitlines()[0][:200]


def _fmt(x) -> str:
  return "n/a" if x is None or x != x else f"{100 * x:.2f}"


def table(rows: list[dict]) -> str:
  """One Markdown table: a row per variant, grouped by paper table; columns are test metrics."""
  extra = sorted({k for r in rows if r["metrics"] for k in r["metrics"].get("test_sets", {}) if k != "test"})
  head = ["paper table", "variant", "config", "frame AUC", "video AUC"] + [f"{k} frame AUC" for k in extra] + [
      "steps", "wall s"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 3 + "---:|" * (len(head) - 3)]
  order = {t: i for i, t in enumerate(TABLE_ORDER)}

  def key(r):
    t = r["table"]
    if t == "SJEDD":
      return (-1, 0)
    return (order.get(t, len(order)), 0 if r["full"] else 1)

  for r in sorted(rows, key=key):
    m = r["metrics"]
    title = "SJEDD VI-XI" if r["table"] == "SJEDD" else TABLE_TITLE.get(r["table"], r["table"])
    if m is None:
      status = r["error"] if r["error"].startswith("not finished") else f"failed: {r['error']}"
      cells = [title, r["row"], r["config"], status, ""] + [""] * len(extra) + ["", ""]
    else:
      sets = m.get("test_sets", {})
      cells = [title, r["row"], r["config"], _fmt(m.get("test/frame_auc")), _fmt(m.get("test/video_auc"))]
      cells += [_fmt((sets.get(k) or {}).get("frame_auc")) for k in extra]
      cells += [str(m.get("steps", "")), f"{m.get('wall_time_s', float('nan')):.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--configs", default="", help="comma-separated config files or globs (default: all twins)")
  ap.add_argument("--arg", default="synthetic", help="get_config argument ('' for the FF++ configs)")
  ap.add_argument("--steps", type=int, default=None, help="override total_steps (quick runs)")
  ap.add_argument("--root", default=os.path.expanduser("~/.cache/sjedd_jax/ablations"), help="workdirs live here")
  ap.add_argument("--set", action="append", default=[], help="key=value override for every run (repeatable)")
  ap.add_argument("--out", default="", help="also write the table to this file")
  ap.add_argument("--progress", action="store_true", help="per-run progress bars")
  ap.add_argument("--table_only", action="store_true",
                  help="train nothing: the table of the runs already finished under --root")
  args = ap.parse_args(argv)
  if args.configs:
    paths = []
    for item in args.configs.split(","):
      hits = sorted(glob.glob(item.strip())) or [item.strip()]
      paths += [os.path.abspath(p) for p in hits]
  else:
    paths = default_configs(args.arg or None)
  arg = args.arg or None
  rows = []
  for i, path in enumerate(paths, 1):
    table_name, row = describe(path)
    print(f"[{i}/{len(paths)}] {os.path.relpath(path, ROOT)}" + (f":{arg}" if arg else ""), flush=True)
    _, metrics, error = run_one(path, arg, args.steps, args.set, args.root, args.progress,
                                train_missing=not args.table_only)
    rows.append(dict(table=table_name, row=row, full=os.path.basename(path) in FULL_MODELS,
                     config=os.path.relpath(path, ROOT) + (f":{arg}" if arg else ""), metrics=metrics, error=error))
  text = table(rows)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0 if all(r["metrics"] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
