"""LiSiam ablation (the release's loss, not a paper table): without the release's auxiliary OCR loss (weight 0.4 -> 0).

    python -m sjedd_jax.train --config configs/lisiam/ablations/no_aux.py --workdir DIR --config.data.dir=...
    python -m sjedd_jax.train --config configs/lisiam/ablations/no_aux.py:synthetic --workdir DIR   # the CPU twin

Builds on configs/lisiam/ffpp.py (an arg "phase1".."phase3" goes to it) or, with the arg
"synthetic", on configs/lisiam/synthetic.py.
"""

from sjedd_jax import config as config_lib

TABLE = "release"   # the auxiliary OCR loss is the release's [R], not the paper's
ROW = "no aux"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg)
  w = tuple(c.weighting.fixed)
  c.weighting.fixed = w[:3] + (0.0,)
  c.weighting.lam_init = w[:3] + (0.0,)
  return c
