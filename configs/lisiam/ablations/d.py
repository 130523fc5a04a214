"""LiSiam ablation, Table VI row D: seg2, cls2, li, MT: the classification and segmentation losses on the degraded view only.

    python -m sjedd_jax.train --config configs/lisiam/ablations/d.py --workdir DIR --config.data.dir=...
    python -m sjedd_jax.train --config configs/lisiam/ablations/d.py:synthetic --workdir DIR   # the CPU twin

Builds on configs/lisiam/ffpp.py (an arg "phase1".."phase3" goes to it) or, with the arg
"synthetic", on configs/lisiam/synthetic.py.
"""

from sjedd_jax import config as config_lib

TABLE = "VI"
ROW = "D"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg)
  c.lisiam.variant = "D"
  return c
