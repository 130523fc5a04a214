r"""MC-LCR beyond the paper: bi-level loss weights (no table row).

Spec section 10: lambda over (L_CE, L_SC) learned by the bi-level weighting, outer loss L_CE on
the second training stream, lambda from (0.5, 0.5), kept >= 0 (Adam lr 1e-3; 1e-2 in the twin).

    python -m sjedd_jax.train --config configs/mc_lcr/ablations/bilevel.py --workdir DIR \
        --config.data.dir=/data/ffpp_c23_mclcr --config.model.backbone_pretrained=/weights/xception.pth \
        --config.test_sets=CDF=/data/cdf_crops        # Table 6 (Celeb-DF AUC) from the same run

``get_config(arg)``: None = FF++ c23 (Table 5 HQ, Table 6); "c40" = FF++ c40 (Table 5 LQ);
"celebdf" = configs/mc_lcr/celebdf.py; "synthetic" = the CPU twin (configs/mc_lcr/synthetic.py).
"""

from sjedd_jax import config as config_lib

TABLE = "beyond"
ROW = "beyond the paper: bi-level loss weights"
TWINS = {"synthetic": "synthetic.py", "c40": "ffpp_c40.py", "celebdf": "celebdf.py"}


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="ffpp_c23.py", twins=TWINS)
  c.weighting.kind = "bilevel"
  return c
