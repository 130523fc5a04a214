"""CLIP (ViT image tower + text tower) in Flax NNX, with loaders for HF, OpenAI and release checkpoints.

``modeling.py`` the modules; ``params.py`` the HF/OpenAI <-> NNX key map;
``checkpoints.py`` ``load_pretrained``/``save_pretrained``; ``tokenizer.py`` CLIP's BPE
tokenizer and id conventions.
"""

from sjedd_jax.backbones.clip.checkpoints import Pretrained, load_pretrained, save_pretrained
from sjedd_jax.backbones.clip.modeling import (CLIP, CLIPConfig, build, get_config, joint_similarity,
                                               restrict_vocabulary)
from sjedd_jax.backbones.clip.tokenizer import ClipTokenizer

# CLIP's image normalisation (OpenAI's), per RGB channel on the [0, 1] scale.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

__all__ = ["CLIP", "CLIPConfig", "ClipTokenizer", "MEAN", "STD", "Pretrained", "build", "get_config", "joint_similarity",
           "load_pretrained", "restrict_vocabulary", "save_pretrained"]
