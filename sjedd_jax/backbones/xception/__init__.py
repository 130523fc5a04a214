"""Xception (timm ``legacy_xception`` / Cadene layout) in Flax NNX: the backbone of MC-LCR and LiSiam.

``modeling.py`` the modules and presets; ``params.py`` the timm / Cadene / LiSiam
state-dict <-> NNX key map (``load_pretrained``, ``to_state_dict``).
"""

from sjedd_jax.backbones.xception.modeling import (DEPTHWISE, PRESETS, REMAT, ShiftedDepthwise, Xception, XceptionConfig,
                                                   depthwise_impl, get_config, remat_impl, set_remat,
                                                   use_shifted_depthwise)
from sjedd_jax.backbones.xception.params import CheckpointError, load_pretrained, to_state_dict

# Xception's input normalisation (timm / Cadene pretrained configs): (x - 0.5) / 0.5.
MEAN = (0.5, 0.5, 0.5)
STD = (0.5, 0.5, 0.5)

__all__ = ["CheckpointError", "DEPTHWISE", "MEAN", "PRESETS", "REMAT", "STD", "ShiftedDepthwise", "Xception", "XceptionConfig", "depthwise_impl",
           "get_config", "load_pretrained", "remat_impl", "set_remat", "to_state_dict", "use_shifted_depthwise"]
