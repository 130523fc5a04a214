"""JEDD draft Table 3 (4): no contrastive ("unaltered", "real") prompts: P = sigmoid(s).

    python -m sjedd_jax.train --config configs/ablations/jedd_no_contrastive.py --workdir /ckpt/jedd_no_contrastive \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/jedd_no_contrastive.py:synthetic --workdir /tmp/jedd_no_contrastive

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(4) w/o contrastive pair"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  del synthetic
  c.model.jedd.contrastive = False
  return c
