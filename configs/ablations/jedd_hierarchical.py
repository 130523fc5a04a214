"""JEDD draft Table 3 (11): the hierarchical probabilistic loss: s - sbar are the raw
scores of the label graph's joint distribution (SJEDD's Eq. 3 marginals).

    python -m sjedd_jax.train --config configs/ablations/jedd_hierarchical.py --workdir /ckpt/jedd_hierarchical \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/jedd_hierarchical.py:synthetic --workdir /tmp/jedd_hierarchical

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(11) Probabilistic loss"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  del synthetic
  c.model.jedd.probability = "hierarchy"
  return c
