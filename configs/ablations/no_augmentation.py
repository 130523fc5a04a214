"""SJEDD Table X, row 2: trained without the expansion's augmented images (aug_eye,
aug_lip_mouth, aug_nose); the original sources keep their Table I labels.

    python -m sjedd_jax.train --config configs/ablations/no_augmentation.py --workdir /ckpt/no_augmentation \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/no_augmentation.py:synthetic --workdir /tmp/no_augmentation

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "X"
ROW = "Relabelling only (no augmentation)"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.data.exclude_expansion = True
  return c
