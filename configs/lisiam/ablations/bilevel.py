"""LiSiam ablation (spec section 10, beyond the paper): bi-level loss weighting (Auto-Lambda) over [L_cls, L_seg, L_li, L_aux]: outer loss L_cls, lambda from (1, 1, 1, 0.4), kept non-negative.

    python -m sjedd_jax.train --config configs/lisiam/ablations/bilevel.py --workdir DIR --config.data.dir=...
    python -m sjedd_jax.train --config configs/lisiam/ablations/bilevel.py:synthetic --workdir DIR   # the CPU twin

Builds on configs/lisiam/ffpp.py (an arg "phase1".."phase3" goes to it) or, with the arg
"synthetic", on configs/lisiam/synthetic.py.
"""

from sjedd_jax import config as config_lib

TABLE = "spec 10"   # not a paper table
ROW = "bi-level"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg)
  c.weighting.kind = "bilevel"
  c.weighting.update_every = 4
  return c
