"""SJEDD Table VI, row 2: the joint embedding trained with cross-entropy instead of
the fidelity loss.

    python -m sjedd_jax.train --config configs/ablations/joint_ce.py --workdir /ckpt/joint_ce \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/joint_ce.py:synthetic --workdir /tmp/joint_ce

Without an argument: an override of ``configs/ffpp.py``; ``:synthetic`` gives the
CPU twin, the same override of ``configs/synthetic.py``.
"""

from sjedd_jax import config as config_lib

TABLE = "VI"
ROW = "Joint embedding, cross-entropy"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp.py")
  c.loss = "bce"
  return c
