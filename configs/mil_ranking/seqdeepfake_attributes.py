r"""Seq-DeepFake facial attributes (Seq-FaceAttr: Bangs, Eyeglasses, Beard, Smiling, Young), same recipe.

    python scripts/prepare_seqdeepfake.py --root /data/SeqDeepFake --subset facial_attributes --out /data/seq_attr
    python -m sjedd_jax.train --config configs/mil_ranking/seqdeepfake_attributes.py:r50 --workdir /ckpt/mil_attr_r50 \
        --config.data.dir=/data/seq_attr --config.model.backbone_pretrained=/weights/resnet50-0676ba61.pth

``get_config(arg)``: "r34" (default) or "r50"; everything else as
``seqdeepfake_components.py`` (the SeqFakeFormer recipe), with the attribute names.
"""

import os

from sjedd_jax import config as config_lib


def get_config(arg=None):
  components = config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                         "seqdeepfake_components.py"), arg or "r34")
  components.model.components = "facial_attributes"
  return components
