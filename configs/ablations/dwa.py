"""SJEDD Table VII: dynamic weight average (Liu et al. 2019) without primary-task
priority, in place of the bi-level weights (period: one epoch, temperature 2).

    python -m sjedd_jax.train --config configs/ablations/dwa.py --workdir /ckpt/dwa \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/dwa.py:synthetic --workdir /tmp/dwa

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "VII"
ROW = "w/ Dynamic weighting average"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.weighting.kind = "dwa"
  return c
