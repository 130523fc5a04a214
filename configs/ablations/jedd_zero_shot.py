"""JEDD draft Table 3 (1): the pretrained CLIP evaluated as it is (zero-shot, no training).

    python -m sjedd_jax.train --config configs/ablations/jedd_zero_shot.py --workdir /ckpt/jedd_zero_shot \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/jedd_zero_shot.py:synthetic --workdir /tmp/jedd_zero_shot

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin) with no
training steps: the run validates and tests the model as built, with the draft's
prompt pairs and P = sigmoid(s - s_bar), and writes metrics.json and the export.
The synthetic twin's CLIP is randomly initialised, so its row is chance by design
(it checks the code path; the paper's row needs pretrained weights).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(1) Pretrained CLIP, zero-shot"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  c.total_steps = 0
  c.num_epochs = 0
  return c
