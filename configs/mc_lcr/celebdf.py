r"""MC-LCR trained on FF++ c23, tested also on Celeb-DF v2 (cross-dataset; spec section 5 (c), Tables 4 and 6).

    python -m sjedd_jax.train --config configs/mc_lcr/celebdf.py:/data/cdf_crops \
        --workdir /ckpt/mc_lcr_cdf --config.data.dir=/data/ffpp_c23_mclcr \
        --config.model.backbone_pretrained=/weights/xception-b5690688.pth

The argument is the prepared Celeb-DF test set (the official 518-video list, 30 frames
per video, 256 px crops; docs/mc_lcr.md has the command); it becomes
``config.test_sets = "CDF=<dir>"``, equivalently ``--config.test_sets=CDF=/data/cdf_crops``.
Training is configs/mc_lcr/ffpp_c23.py; the results hold ``test`` (FF++ c23) and ``CDF``
(frame AUC: the paper's 71.61). An evaluation of a finished c23 run needs no retraining:
``python -m sjedd_jax.evaluate`` with the same config and workdir.
"""

import os

from sjedd_jax import config as config_lib


def get_config(arg=None):
  """``arg``: the prepared Celeb-DF directory (or "synthetic": the twin, tested on its own test split)."""
  here = os.path.dirname(os.path.abspath(__file__))
  if arg == "synthetic":
    return config_lib.load_config_file(os.path.join(here, "ffpp_c23.py"), "synthetic")
  c = config_lib.load_config_file(os.path.join(here, "ffpp_c23.py"))
  c.test_sets = f"CDF={arg}" if arg else "CDF="   # an empty directory is refused before training starts
  return c
