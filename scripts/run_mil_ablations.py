r"""Runs the Table 3 rows of the contrastive-MIL ranking detector and prints their sequence metrics.

    python scripts/run_mil_ablations.py --root /tmp/mil_t3                  # the twins (:synthetic) of rows I-VI
    python scripts/run_mil_ablations.py --root /tmp/mil_t3 --steps 500 --set model.rank_target=graded
    python scripts/run_mil_ablations.py --arg "" --root /ckpt/t3 --set data.dir=/data/seq_comp \
        --set model.backbone_pretrained=/weights/resnet50-0676ba61.pth      # Seq-FaceComp, ResNet-50

Each config (default: configs/mil_ranking/table3_*.py) trains in its own workdir
``ROOT/<name>[_<arg>]_<steps>`` with ``scripts/run_ablations.py``'s runner (a finished
run is reused, an interrupted one resumes). The table's columns come from each run's
``results.json`` (``test/sequence``, written by ``sjedd_jax.detectors.mil_ranking``'s
``eval_metrics``): pairwise order accuracy, Fixed-Acc and Adaptive-Acc with the
all-original predictor beside them, multi-label and exact-set accuracy, mean R^2 and
the MIL real/fake AUC, in %.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _runner():
  spec = importlib.util.spec_from_file_location("run_ablations", os.path.join(ROOT, "scripts", "run_ablations.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


COLUMNS = (("pairwise order", "pairwise_order_acc"), ("Fixed-Acc", "fixed_acc"), ("Adaptive-Acc", "adaptive_acc"),
           ("multi-label", "multilabel_acc"), ("exact set", "exact_set_acc"), ("R^2 mean", "r2_mean"),
           ("MIL AUC", "mil_auc"))
BASELINE = ("fixed_acc", "adaptive_acc")


def row_label(path: str) -> str:
  """A config file's ROW constant, else its file name (the shared runner's ``describe`` labels any
  ``synthetic.py`` as SJEDD's full model)."""
  spec = importlib.util.spec_from_file_location("mil_row_" + os.path.basename(path)[:-3], path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return getattr(mod, "ROW", os.path.basename(path)[:-3])


def _fmt(x) -> str:
  return "n/a" if x is None or x != x else f"{100 * x:.1f}"


def sequence_results(workdir: str) -> dict | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return (json.load(f).get("test") or {}).get("sequence")


def table(rows: list[dict]) -> str:
  head = ["row", "config"] + [c for c, _ in COLUMNS] + ["steps", "wall s"]
  lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
  for r in rows:
    s, m = r["sequence"], r["metrics"]
    if s is None:
      lines.append(f"| {r['row']} | {r['config']} | " + (r["error"] or "no results") + " |" + " |" * (len(head) - 3))
      continue
    cells = []
    for _, key in COLUMNS:
      cell = _fmt(s.get(key))
      if key in BASELINE:
        cell += f" ({_fmt(s.get(key + '_all_original'))})"
      cells.append(cell)
    lines.append(f"| {r['row']} | {r['config']} | " + " | ".join(cells)
                 + f" | {m.get('steps', '')} | {m.get('wall_time_s', float('nan')):.0f} |")
  lines.append("")
  lines.append("In %; Fixed-Acc and Adaptive-Acc with the all-original predictor's score in brackets.")
  return "\n".join(lines)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--configs", default="", help="comma-separated config files or globs "
                  "(default: configs/mil_ranking/table3_*.py)")
  ap.add_argument("--arg", default="synthetic", help="get_config argument ('' for Seq-FaceComp R50)")
  ap.add_argument("--steps", type=int, default=None, help="override total_steps")
  ap.add_argument("--root", default=os.path.expanduser("~/.cache/sjedd_jax/mil_ablations"))
  ap.add_argument("--set", action="append", default=[], help="key=value override for every run (repeatable)")
  ap.add_argument("--out", default="", help="also write the table to this file")
  ap.add_argument("--progress", action="store_true")
  ap.add_argument("--table_only", action="store_true", help="train nothing; tabulate finished runs")
  args = ap.parse_args(argv)
  runner = _runner()
  if args.configs:
    paths = []
    for item in args.configs.split(","):
      paths += [os.path.abspath(p) for p in (sorted(glob.glob(item.strip())) or [item.strip()])]
  else:
    order = ("i", "ii", "iii", "iv", "v", "vi")
    paths = [os.path.join(ROOT, "configs", "mil_ranking", f"table3_{r}.py") for r in order]
  arg = args.arg or None
  rows = []
  for i, path in enumerate(paths, 1):
    row = row_label(path)
    print(f"[{i}/{len(paths)}] {os.path.relpath(path, ROOT)}" + (f":{arg}" if arg else ""), flush=True)
    workdir, metrics, error = runner.run_one(path, arg, args.steps, args.set, args.root, args.progress,
                                             train_missing=not args.table_only)
    rows.append(dict(row=row, config=os.path.relpath(path, ROOT) + (f":{arg}" if arg else "")
                     + "".join(f" {s}" for s in args.set),
                     metrics=metrics or {}, error=error, sequence=sequence_results(workdir) if metrics else None))
  text = table(rows)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")
  return 0 if all(r["sequence"] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
