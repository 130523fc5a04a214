r"""Table 3 row VI: L_BCE^U + L_BCE^V + L_CLS + L_Rank (the full model; Seq-FaceComp Fixed-Acc 74.54, ResNet-50).

    python -m sjedd_jax.train --config configs/mil_ranking/table3_vi.py --workdir /ckpt/t3_vi \
        --config.data.dir=/data/seq_comp --config.model.backbone_pretrained=/weights/resnet50-0676ba61.pth
    python -m sjedd_jax.train --config configs/mil_ranking/table3_vi.py:synthetic --workdir /tmp/t3_vi

Without an argument: ``seqdeepfake_components.py:r50`` (Table 3 is ResNet-50 on
Seq-FaceComp); ``:synthetic`` gives the CPU twin (``synthetic.py``); ``:r34`` the R34 preset.
The other rows (table3_i.py .. table3_v.py) build on this file and switch losses off
(``model.use_cls``, ``use_bce_u``, ``use_bce_v``, ``use_rank``). scripts/run_mil_ablations.py
runs them all and tabulates the sequence metrics.
"""

import os

from sjedd_jax import config as config_lib

TABLE = "MIL 3"
ROW = "VI: L_BCE^U + L_BCE^V + L_CLS + L_Rank"
HERE = os.path.dirname(os.path.abspath(__file__))


def get_config(arg=None):
  if arg == "synthetic":
    c = config_lib.load_config_file(os.path.join(HERE, "synthetic.py"))
  else:
    c = config_lib.load_config_file(os.path.join(HERE, "seqdeepfake_components.py"), arg or "r50")
  c.model.use_bce_u = True
  c.model.use_bce_v = True
  c.model.use_cls = True
  c.model.use_rank = True
  return c
