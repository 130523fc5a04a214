"""The release recipe on expanded FF++ (spec section 6).

    python -m sjedd_jax.train --config configs/ffpp.py --workdir /ckpt/sjedd_ffpp \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32

ViT-B/32 CLIP from a local checkpoint (both towers fine-tuned), AdamW lr 6e-7,
weight decay 1e-3, batch 32, 20 epochs, CosineAnnealingLR(T_max=5) per epoch,
lambda init 1.0 with Adam lr 1e-3 every step, finite-difference hypergradient.
"""

from sjedd_jax import config as config_lib


def get_config():
  c = config_lib.base_config("sjedd")
  c.data.kind = "manifest"
  c.data.dir = ""                 # the expanded FF++ (scripts/preprocess_ffpp.py + expand_dataset.py)
  c.data.image_size = 224
  c.model.clip = "ViT-B/32"
  c.model.pretrained = ""         # a local CLIP ViT-B/32 checkpoint (HF dir or OpenAI ViT-B-32.pt)
  c.model.require_pretrained = True
  c.optim.lr = 6e-7
  c.optim.weight_decay = 1e-3
  c.optim.schedule = "release_cosine"
  c.optim.t_max = 5
  c.batch_size = 32
  c.num_epochs = 20
  c.eval_every = 0                # every epoch
  c.ckpt_every = 1000
  # Extra test sets prepared with scripts/preprocess_ffpp.py --layout folders, e.g.
  # --config.test_sets="CDF=/data/cdf,DFDC=/data/dfdc"
  return c
