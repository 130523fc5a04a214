"""JEDD draft Table 3 (5): the binary level only (a single task, real/fake).

    python -m sjedd_jax.train --config configs/ablations/jedd_binary.py --workdir /ckpt/jedd_binary \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/jedd_binary.py:synthetic --workdir /tmp/jedd_binary

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(5) Binary templates"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  del synthetic
  c.model.jedd.levels = 1
  return c
