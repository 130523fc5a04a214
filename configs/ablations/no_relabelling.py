"""SJEDD Table X, row 3: the augmented images are used but only the binary label is
observed (no relabelling into the hierarchy).

    python -m sjedd_jax.train --config configs/ablations/no_relabelling.py --workdir /ckpt/no_relabelling \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/no_relabelling.py:synthetic --workdir /tmp/no_relabelling

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "X"
ROW = "Augmentation only (no relabelling)"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.data.binary_only = True
  return c
