"""SJEDD Table X, row 1: no augmented images and binary labels only.

    python -m sjedd_jax.train --config configs/ablations/no_aug_no_relabel.py --workdir /ckpt/no_aug_no_relabel \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/no_aug_no_relabel.py:synthetic --workdir /tmp/no_aug_no_relabel

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "X"
ROW = "Neither augmentation nor relabelling"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.data.exclude_expansion = True
  c.data.binary_only = True
  return c
