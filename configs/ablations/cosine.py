"""SJEDD Table VII, Eq. 8: cosine (normalised) similarity divided by a temperature
instead of the inner product.

    python -m sjedd_jax.train --config configs/ablations/cosine.py --workdir /ckpt/cosine \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/cosine.py:synthetic --workdir /tmp/cosine

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "VII"
ROW = "w/ Normalized similarity"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.model.similarity = "cosine"
  return c
