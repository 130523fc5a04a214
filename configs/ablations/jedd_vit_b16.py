"""JEDD draft Table 3 (8): a ViT-B/16 image tower. The synthetic twin halves the tiny
preset's patch (8 -> 4), the change from B/32 to B/16.

    python -m sjedd_jax.train --config configs/ablations/jedd_vit_b16.py --workdir /ckpt/jedd_vit_b16 \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch16
    python -m sjedd_jax.train --config configs/ablations/jedd_vit_b16.py:synthetic --workdir /tmp/jedd_vit_b16

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(8) ViT-B/16"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  if synthetic:
    c.model.clip_overrides.patch_size = 4
  else:
    c.model.clip = "ViT-B/16"
  return c
