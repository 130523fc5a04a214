"""JEDD draft Table 3 (7): joint templates, one prompt per legal label state ("A photo
of a fake face with the global attribute of expression and the local attribute of
mouth are altered"); a softmax over the states is marginalised per node.

    python -m sjedd_jax.train --config configs/ablations/jedd_joint_templates.py --workdir /ckpt/jedd_joint_templates \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32
    python -m sjedd_jax.train --config configs/ablations/jedd_joint_templates.py:synthetic --workdir /tmp/jedd_joint_templates

An override of ``configs/jedd_draft.py`` (``:synthetic``: of its CPU twin).
"""

from sjedd_jax import config as config_lib

TABLE = "JEDD 3"
ROW = "(7) Joint templates"


def get_config(arg=None):
  c = config_lib.base_for_variant(__file__, arg, base="jedd_draft.py", twins={})
  synthetic = arg == "synthetic"
  del synthetic
  c.model.jedd.probability = "joint"
  return c
