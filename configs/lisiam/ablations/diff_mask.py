"""LiSiam ablation, Table VII row DIFF: DIFF masks (thresholded |F - R|) instead of SSIM masks: FF++ reads <data>/masks_diff (python scripts/make_masks.py DATA --kind diff); the twin makes them with the production pairing.

    python -m sjedd_jax.train --config configs/lisiam/ablations/diff_mask.py --workdir DIR --config.data.dir=...
    python -m sjedd_jax.train --config configs/lisiam/ablations/diff_mask.py:synthetic --workdir DIR   # the CPU twin

Builds on configs/lisiam/ffpp.py (an arg "phase1".."phase3" goes to it) or, with the arg
"synthetic", on configs/lisiam/synthetic.py.
"""

from sjedd_jax import config as config_lib

TABLE = "VII"
ROW = "DIFF"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg)
  c.lisiam.masks = "diff"
  return c
