"""SJEDD Table VII: fixed loss weights {1, 0.1, 0.1} prioritising the primary task by hand.

    python -m sjedd_jax.train --config configs/ablations/fixed_weights.py --workdir /ckpt/fixed_weights \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/fixed_weights.py:synthetic --workdir /tmp/fixed_weights

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "VII"
ROW = "w/ Loss weightings of {1.0, 0.1, 0.1}"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.weighting.kind = "fixed"
  c.weighting.fixed = (1.0, 0.1, 0.1)
  return c
