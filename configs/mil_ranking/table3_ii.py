r"""Table 3 row II: L_BCE^U + L_CLS (Seq-FaceComp Fixed-Acc 54.21, ResNet-50).

    python -m sjedd_jax.train --config configs/mil_ranking/table3_ii.py:synthetic --workdir /tmp/t3_ii

An override of ``table3_vi.py`` (the full model) with the same argument: none for
Seq-FaceComp R50, ``:synthetic`` for the CPU twin.

With the rank loss off and one BCE head trained, the per-component scores are that head's
(``model.decode_from="auto"`` -> f^U), ranked by probability as the paper evaluates row I.
"""

import os

from sjedd_jax import config as config_lib

TABLE = "MIL 3"
ROW = "II: L_BCE^U + L_CLS"


def get_config(arg=None):
  c = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "table3_vi.py"), arg)
  c.model.use_bce_u = True
  c.model.use_bce_v = False
  c.model.use_cls = True
  c.model.use_rank = False
  return c
