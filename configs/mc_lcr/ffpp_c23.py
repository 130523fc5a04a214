r"""MC-LCR on FF++ HQ (c23), the paper's recipe (spec mc_lcr.md section 4; Tables 2, 4-6).

    python -m sjedd_jax.train --config configs/mc_lcr/ffpp_c23.py --workdir /ckpt/mc_lcr_c23 \
        --config.data.dir=/data/ffpp_c23_mclcr \
        --config.model.backbone_pretrained=/weights/xception-b5690688.pth

Data: real + the four methods at c23, 30 evenly spaced frames per video, dlib's largest
face in a 1.3x square crop resized to 256 px (docs/mc_lcr.md has the preprocessing
command); every batch of 16 holds 8 real + 8 fake (real frames repeated); no
augmentation (no perturbations, no flips); Xception's (x - 0.5) / 0.5 normalisation.

Model: Xception from ImageNet weights (required: a local timm / Cadene file) + SSRB +
patch spectra (P = 16) through PAPDA and two 2-layer MLP-Mixers, fused to F_E (1024),
z (128) and one logit; dropout 0.5; 19,939,753 parameters.

Loss: Eq. 15, (1 - alpha) L_CE + alpha L_SC with alpha = 0.5, tau = 0.1 (fixed weights;
configs/mc_lcr/ablations/bilevel.py learns them instead).

Optimiser: AdamW lr 1e-3, weight decay 1e-4 (--config.optim.name=adam_l2 for Adam with
L2 in the gradient); ReduceLROnPlateau on the validation L_CE (x0.5 after 5 epochs
without improvement), checked once per epoch; 50 epochs (an epoch = one pass over the
fake frames with the real frames repeated: 10,800 steps on FF++ c23); the checkpoint with
the best validation AUC is tested.
"""

from sjedd_jax import config as config_lib


def get_config(arg=None):
  """``arg``: None (FF++ c23), or "synthetic" (configs/mc_lcr/synthetic.py, the CPU twin)."""
  if arg == "synthetic":
    import os  # pylint: disable=g-import-not-at-top
    return config_lib.load_config_file(os.path.join(os.path.dirname(os.path.abspath(__file__)), "synthetic.py"))
  if arg:
    raise ValueError(f"configs/mc_lcr/ffpp_c23.py: unknown argument {arg!r} (None or 'synthetic')")
  c = config_lib.base_config("mc_lcr")
  c.data.kind = "manifest"
  c.data.dir = ""                      # scripts/preprocess_ffpp.py --num-frames 30 --size 256 --compression c23
  c.data.image_size = 256
  c.data.balance_real = True           # 8 real + 8 fake per batch
  c.data.perturb_probability = 0.0
  c.data.hflip = False
  c.model.backbone = "xception"
  c.model.backbone_pretrained = ""     # ImageNet Xception: timm legacy_xception or Cadene xception-b5690688.pth
  c.model.require_pretrained = True
  c.weighting.kind = "fixed"           # Eq. 15 with alpha = 0.5
  c.weighting.fixed = (0.5, 0.5)
  c.optim.name = "adamw"               # "adam_l2": torch.optim.Adam(weight_decay=1e-4)
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "constant"
  c.optim.plateau_patience = 5         # ReduceLROnPlateau(factor 0.5, patience 5) on the val loss
  c.optim.plateau_factor = 0.5
  c.optim.plateau_metric = "val/frame_log_loss"   # = L_CE over the val split
  c.optim.plateau_mode = "min"
  c.batch_size = 16
  c.eval_batch_size = 64
  c.num_epochs = 50
  c.eval_every = 0                     # validate once per epoch
  c.ckpt_every = 2000
  c.log_every = 100
  return c
