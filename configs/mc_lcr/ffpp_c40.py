r"""MC-LCR on FF++ LQ (c40): the c23 recipe on the c40 crops (spec mc_lcr.md sections 1, 4; Tables 2, 3, 5).

    python -m sjedd_jax.train --config configs/mc_lcr/ffpp_c40.py --workdir /ckpt/mc_lcr_c40 \
        --config.data.dir=/data/ffpp_c40_mclcr \
        --config.model.backbone_pretrained=/weights/xception-b5690688.pth

Everything but the data is configs/mc_lcr/ffpp_c23.py. Table 3 trains and tests on real
+ one method at c40: add ``--config.data.train_sources=Deepfakes`` (the per-method test
is then ``held_out/...`` for the others and ``test`` for all methods; docs/mc_lcr.md).
"""

import os

from sjedd_jax import config as config_lib


def get_config(arg=None):
  """``arg``: None (FF++ c40) or "synthetic" (the CPU twin)."""
  c = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "ffpp_c23.py"), arg)
  if arg is None:
    c.data.dir = ""                    # scripts/preprocess_ffpp.py --num-frames 30 --size 256 --compression c40
  return c
