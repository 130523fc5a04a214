"""SJEDD Table XI, row 1: Face X-ray-style blending (whole-face or random-region
blends of the nearest real face, binary label only) instead of the semantic
expansion. On FF++ make it with ``scripts/expand_dataset.py --data ORIGINALS --out
DIR --mode xray`` and give ``--config.data.dir=DIR``; the synthetic twin makes it
beside the synthetic world.

    python -m sjedd_jax.train --config configs/ablations/xray.py --workdir /ckpt/xray \
        --config.data.dir=/data/ffpp_xray --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/xray.py:synthetic --workdir /tmp/xray

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "XI"
ROW = "Face X-ray-augmented"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.data.expansion_mode = "xray"
  return c
