"""LiSiam ablation, Table VI row E: seg2, cls2, MT: one branch fed the degraded view, no L_li.

    python -m sjedd_jax.train --config configs/lisiam/ablations/e.py --workdir DIR --config.data.dir=...
    python -m sjedd_jax.train --config configs/lisiam/ablations/e.py:synthetic --workdir DIR   # the CPU twin

Builds on configs/lisiam/ffpp.py (an arg "phase1".."phase3" goes to it) or, with the arg
"synthetic", on configs/lisiam/synthetic.py.
"""

from sjedd_jax import config as config_lib

TABLE = "VI"
ROW = "E"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg)
  c.lisiam.variant = "E"
  return c
