"""SJEDD Table VII: keyword templates "fake", "altered g", "altered l".

    python -m sjedd_jax.train --config configs/ablations/keyword_templates.py --workdir /ckpt/keyword_templates \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/keyword_templates.py:synthetic --workdir /tmp/keyword_templates

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "VII"
ROW = "w/ Simplified text templates"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.model.templates = "keyword"
  return c
