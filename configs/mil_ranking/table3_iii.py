r"""Table 3 row III: L_BCE^U + L_Rank (Seq-FaceComp Fixed-Acc 72.52, ResNet-50).

    python -m sjedd_jax.train --config configs/mil_ranking/table3_iii.py:synthetic --workdir /tmp/t3_iii

An override of ``table3_vi.py`` (the full model) with the same argument: none for
Seq-FaceComp R50, ``:synthetic`` for the CPU twin.
"""

import os

from sjedd_jax import config as config_lib

TABLE = "MIL 3"
ROW = "III: L_BCE^U + L_Rank"


def get_config(arg=None):
  c = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "table3_vi.py"), arg)
  c.model.use_bce_u = True
  c.model.use_bce_v = False
  c.model.use_cls = False
  c.model.use_rank = True
  return c
