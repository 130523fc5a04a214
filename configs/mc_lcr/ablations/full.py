r"""MC-LCR Table 5/6 row 5 MC-LCR.

The full model as its base config (nothing changed; listed so every row has a file). Paper: HQ
97.21 / 99.62, LQ 88.07 / 90.28, CDF AUC 71.61.

    python -m sjedd_jax.train --config configs/mc_lcr/ablations/full.py --workdir DIR \
        --config.data.dir=/data/ffpp_c23_mclcr --config.model.backbone_pretrained=/weights/xception.pth \
        --config.test_sets=CDF=/data/cdf_crops        # Table 6 (Celeb-DF AUC) from the same run

``get_config(arg)``: None = FF++ c23 (Table 5 HQ, Table 6); "c40" = FF++ c40 (Table 5 LQ);
"celebdf" = configs/mc_lcr/celebdf.py; "synthetic" = the CPU twin (configs/mc_lcr/synthetic.py).
"""

from sjedd_jax import config as config_lib

TABLE = "5, 6"
ROW = "5 MC-LCR"
TWINS = {"synthetic": "synthetic.py", "c40": "ffpp_c40.py", "celebdf": "celebdf.py"}


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp_c23.py", twins=TWINS)
  return c
