"""SJEDD Table VI, row 1: raw scores from the image encoder alone (a linear head on
the image embedding, no text tower), trained with cross-entropy instead of the
fidelity loss. (The paper trains Table VI on FFSC; see configs/ffsc.py for its graph.)

    python -m sjedd_jax.train --config configs/ablations/image_only_ce.py --workdir /ckpt/image_only_ce \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/image_only_ce.py:synthetic --workdir /tmp/image_only_ce

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "VI"
ROW = "Image encoder only, cross-entropy"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.model.head = "linear"
  c.loss = "bce"
  return c
