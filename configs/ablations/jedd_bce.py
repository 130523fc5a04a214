"""JEDD draft Table 3 (10): binary cross-entropy instead of the fidelity loss.

    python -m sjedd_jax.train --config configs/ablations/jedd_bce.py --workdir /ckpt/jedd_bce \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/jedd_bce.py:synthetic --workdir /tmp/jedd_bce

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(10) BCE loss"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  del synthetic
  c.loss = "bce"
  return c
