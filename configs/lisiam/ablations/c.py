"""LiSiam ablation, Table VI row C: cls1, li, MT: no segmentation or auxiliary loss (their values are logged, not trained).

    python -m sjedd_jax.train --config configs/lisiam/ablations/c.py --workdir DIR --config.data.dir=...
    python -m sjedd_jax.train --config configs/lisiam/ablations/c.py:synthetic --workdir DIR   # the CPU twin

Builds on configs/lisiam/ffpp.py (an arg "phase1".."phase3" goes to it) or, with the arg
"synthetic", on configs/lisiam/synthetic.py.
"""

from sjedd_jax import config as config_lib

TABLE = "VI"
ROW = "C"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg)
  c.lisiam.variant = "C"
  return c
