"""LiSiam ablation, Table VI row B: seg1, seg2, cls1, cls2, li, MT: branch 2 also runs SCU/MT/MLP; each task sums both branches.

    python -m sjedd_jax.train --config configs/lisiam/ablations/b.py --workdir DIR --config.data.dir=...
    python -m sjedd_jax.train --config configs/lisiam/ablations/b.py:synthetic --workdir DIR   # the CPU twin

Builds on configs/lisiam/ffpp.py (an arg "phase1".."phase3" goes to it) or, with the arg
"synthetic", on configs/lisiam/synthetic.py.
"""

from sjedd_jax import config as config_lib

TABLE = "VI"
ROW = "B"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg)
  c.lisiam.variant = "B"
  return c
