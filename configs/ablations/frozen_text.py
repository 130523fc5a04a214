"""SJEDD Table VII: the text tower frozen (stop-gradient, excluded from the optimiser).

    python -m sjedd_jax.train --config configs/ablations/frozen_text.py --workdir /ckpt/frozen_text \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/frozen_text.py:synthetic --workdir /tmp/frozen_text

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "VII"
ROW = "w/ Frozen text encoder"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.model.freeze_text = True
  return c
