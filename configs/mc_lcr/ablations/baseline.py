r"""MC-LCR Table 5/6 row 1 baseline (Xception).

Xception's GF alone through F_E and the classifier, L_CE only: no SSRB, no frequency branch,
alpha = 0 (fixed weights (1, 0)). Paper: HQ 95.79 / 97.73, LQ 86.84 / 89.38, CDF AUC 65.29.

    python -m sjedd_jax.train --config configs/mc_lcr/ablations/baseline.py --workdir DIR \
        --config.data.dir=/data/ffpp_c23_mclcr --config.model.backbone_pretrained=/weights/xception.pth \
        --config.test_sets=CDF=/data/cdf_crops        # Table 6 (Celeb-DF AUC) from the same run

``get_config(arg)``: None = FF++ c23 (Table 5 HQ, Table 6); "c40" = FF++ c40 (Table 5 LQ);
"celebdf" = configs/mc_lcr/celebdf.py; "synthetic" = the CPU twin (configs/mc_lcr/synthetic.py).
"""

from sjedd_jax import config as config_lib

TABLE = "5, 6"
ROW = "1 baseline (Xception)"
TWINS = {"synthetic": "synthetic.py", "c40": "ffpp_c40.py", "celebdf": "celebdf.py"}


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp_c23.py", twins=TWINS)
  c.model.ssrb = False
  c.model.papda = False
  c.weighting.fixed = (1.0, 0.0)
  return c
