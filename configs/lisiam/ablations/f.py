"""LiSiam ablation, Table VI row F: seg1, cls1, li, no MT: alpha = GAP of two conv 3x3 s2 over the segmentation logits.

    python -m sjedd_jax.train --config configs/lisiam/ablations/f.py --workdir DIR --config.data.dir=...
    python -m sjedd_jax.train --config configs/lisiam/ablations/f.py:synthetic --workdir DIR   # the CPU twin

Builds on configs/lisiam/ffpp.py (an arg "phase1".."phase3" goes to it) or, with the arg
"synthetic", on configs/lisiam/synthetic.py.
"""

from sjedd_jax import config as config_lib

TABLE = "VI"
ROW = "F"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg)
  c.model.head = "seg_logits"
  return c
