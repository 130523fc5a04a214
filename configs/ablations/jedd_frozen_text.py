"""JEDD draft Table 3 (2): the text encoder frozen.

    python -m sjedd_jax.train --config configs/ablations/jedd_frozen_text.py --workdir /ckpt/jedd_frozen_text \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/jedd_frozen_text.py:synthetic --workdir /tmp/jedd_frozen_text

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(2) Frozen text encoder"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  del synthetic
  c.model.freeze_text = True
  return c
