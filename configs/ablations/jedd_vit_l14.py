"""JEDD draft Table 3 (9): ViT-L/14 towers. The synthetic twin scales the tiny preset
as L/14 scales B/32: wider (x1.5), twice as deep, and a finer patch (8 -> 4).

    python -m sjedd_jax.train --config configs/ablations/jedd_vit_l14.py --workdir /ckpt/jedd_vit_l14 \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-large-patch14
    python -m sjedd_jax.train --config configs/ablations/jedd_vit_l14.py:synthetic --workdir /tmp/jedd_vit_l14

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(9) ViT-L/14"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  if synthetic:
    for k, v in dict(embed_dim=192, vision_width=192, vision_layers=6, vision_heads=6, patch_size=4,
                     text_width=192, text_heads=6).items():
      c.model.clip_overrides[k] = v
  else:
    c.model.clip = "ViT-L/14"
  return c
