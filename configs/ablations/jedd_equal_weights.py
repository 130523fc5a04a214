"""JEDD draft Table 3 (3): equal task weights instead of dynamic weight average.

    python -m sjedd_jax.train --config configs/ablations/jedd_equal_weights.py --workdir /ckpt/jedd_equal_weights \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/jedd_equal_weights.py:synthetic --workdir /tmp/jedd_equal_weights

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(3) Equal weights"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  del synthetic
  c.weighting.kind = "fixed"
  c.weighting.fixed = (1.0, 1.0, 1.0)
  return c
