r"""MC-LCR twin runs side by side: held-out AUC per forgery family, z separation, SupCon start/end.

    python scripts/mc_lcr_twin_report.py /tmp/mc_twin_full /tmp/mc_twin_nosc ...

For each training workdir (``sjedd_jax.train`` with an MC-LCR config): its export is
evaluated on the identity-disjoint test split, all families together and each family
against the real test faces (frame AUC), with the mean cosine of z within minus across
classes (spec mc_lcr.md section 9 check 2); the SupCon loss at the first and last
logged step and the run's wall time come from ``metrics.jsonl`` / ``metrics.json``.
Prints one Markdown table row per run (docs/mc_lcr.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # noqa: E402

from sjedd_jax import detectors, evaluator as evaluator_lib  # noqa: E402
from sjedd_jax.data import datasets, pipeline, sources as sources_lib  # noqa: E402
from sjedd_jax.data.synthetic import FORGERY_SOURCES  # noqa: E402


def report(workdir: str, batch_size: int = 64) -> dict:
  export = os.path.join(workdir, "export")
  det, variables = detectors.load_export(export)
  with open(os.path.join(export, "mc_lcr.json")) as f:
    config = ml_collections.ConfigDict(json.load(f)["config"])
  data_dir = datasets.dataset_dir(config, progress=False)
  ev = evaluator_lib.Evaluator(det)

  def run(sources):
    cfg = pipeline.DataConfig(data_dir=data_dir, split="test", sources=sources,
                              exclude_sources=sources_lib.EXPANSION_SOURCES, image_size=det.image_size,
                              batch_size=batch_size, label_fn=det.label_fn, mean=det.mean, std=det.std)
    return ev.run(cfg, variables, progress=False)

  out = {"workdir": workdir}
  res = run(None)
  out["auc"] = res["frame"]["auc"]
  out["cos_gap"] = res["embedding"]["cos_gap"]
  for fam in FORGERY_SOURCES:
    out[fam] = run([sources_lib.REAL, fam])["frame"]["auc"]
  recs = []
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    recs = [json.loads(line) for line in f if line.strip()]
  sc = [(r["step"], r["loss/supcon"]) for r in recs if "loss/supcon" in r]
  out["supcon_first"], out["supcon_last"] = sc[0], sc[-1]
  with open(os.path.join(workdir, "metrics.json")) as f:
    out["wall_time_s"] = json.load(f).get("wall_time_s")
  m = config.model
  out["model"] = (f"ssrb={m.ssrb} papda={m.papda} gf={m.get('gf', True)} P={m.patch} "
                  f"lambda={tuple(config.weighting.fixed) if config.weighting.kind == 'fixed' else 'bilevel'}")
  out["checkerboard"] = tuple(config.data.synthetic.get("checkerboard", ()) or ())
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("workdirs", nargs="+")
  p.add_argument("--json", default="", help="also write the rows to this JSON file")
  args = p.parse_args()
  rows = [report(w) for w in args.workdirs]
  fams = list(FORGERY_SOURCES)
  print("| run | model | world | test AUC | " + " | ".join(fams) + " | z cos gap | L_SC first -> last | wall s |")
  print("|---|---|---|---:|" + "---:|" * len(fams) + "---:|---|---:|")
  for r in rows:
    world = f"checkerboard {r['checkerboard']}" if r["checkerboard"] else "default"
    print(f"| {os.path.basename(r['workdir'].rstrip('/'))} | {r['model']} | {world} | {r['auc']:.4f} | "
          + " | ".join(f"{r[f]:.4f}" for f in fams)
          + f" | {r['cos_gap']:.3f} | {r['supcon_first'][1]:.3f} (step {r['supcon_first'][0]}) -> "
          f"{r['supcon_last'][1]:.3f} (step {r['supcon_last'][0]}) | {r['wall_time_s']:.0f} |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
