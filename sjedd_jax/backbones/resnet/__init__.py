"""ResNet-18/34/50/101 (torchvision v1.5) and a tiny preset in Flax NNX, returning C2..C5.

``modeling.py`` the modules (``ResNet``, ``ResNetConfig``, ``get_config``, frozen-stage
filters); ``params.py`` the torchvision/timm <-> NNX key map (``load_pretrained``,
``to_state_dict``), which also reads SeqFakeFormer's ``backbone.0.body.*`` checkpoints.
"""

from sjedd_jax.backbones.resnet.modeling import (FEATURES, PRESETS, STAGES, ResNet, ResNetConfig,
                                                 frozen_filter, get_config, param_labels, stage_of)
from sjedd_jax.backbones.resnet.params import load_pretrained, to_state_dict

# ImageNet normalisation (torchvision's pretrained ResNets), per RGB channel on the [0, 1] scale.
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)

__all__ = ["FEATURES", "MEAN", "PRESETS", "ResNet", "ResNetConfig", "STAGES", "STD", "frozen_filter",
           "get_config", "load_pretrained", "param_labels", "stage_of", "to_state_dict"]
