"""Beyond the papers: the bi-level optimiser of SJEDD (sjedd_jax.bilevel) tunes the
draft detector's three level weights in place of dynamic weight average.

    python -m sjedd_jax.train --config configs/ablations/jedd_bilevel.py --workdir /ckpt/jedd_bilevel \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/jedd_bilevel.py:synthetic --workdir /tmp/jedd_bilevel

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "Bi-level weights (instead of DWA)"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  del synthetic
  c.weighting.kind = "bilevel"
  return c
