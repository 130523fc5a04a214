"""JEDD draft Table 3 (6): binary and global-attribute levels (no local level).

    python -m sjedd_jax.train --config configs/ablations/jedd_two_levels.py --workdir /ckpt/jedd_two_levels \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/jedd_two_levels.py:synthetic --workdir /tmp/jedd_two_levels

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(6) Two levels"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  del synthetic
  c.model.jedd.levels = 2
  return c
