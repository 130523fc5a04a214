r"""Table 3 row IV: L_BCE^U + L_CLS + L_Rank (Seq-FaceComp Fixed-Acc 73.43, ResNet-50).

    python -m sjedd_jax.train --config configs/mil_ranking/table3_iv.py:synthetic --workdir /tmp/t3_iv

An override of ``table3_vi.py`` (the full model) with the same argument: none for
Seq-FaceComp R50, ``:synthetic`` for the CPU twin.
"""

import os

from sjedd_jax import config as config_lib

TABLE = "MIL 3"
ROW = "IV: L_BCE^U + L_CLS + L_Rank"


def get_config(arg=None):
  c = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "table3_vi.py"), arg)
  c.model.use_bce_u = True
  c.model.use_bce_v = False
  c.model.use_cls = True
  c.model.use_rank = True
  return c
