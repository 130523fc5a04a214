r"""LiSiam's recipe on FF++ (spec lisiam.md section 4): three phases, SGD, poly schedule.

    # masks once: python scripts/make_masks.py /data/ffpp_c40 --kind ssim
    python -m sjedd_jax.train --config configs/lisiam/ffpp.py:phase1 --workdir /ckpt/lisiam_p1 \
        --config.data.dir=/data/ffpp_c40 --config.model.pretrained=/weights/xception-b5690688.pth
    python -m sjedd_jax.train --config configs/lisiam/ffpp.py:phase2 --workdir /ckpt/lisiam_p2 \
        --config.data.dir=/data/ffpp_c40 --config.model.init_from=/ckpt/lisiam_p1/export
    python -m sjedd_jax.train --config configs/lisiam/ffpp.py:phase3 --workdir /ckpt/lisiam_p3 \
        --config.data.dir=/data/ffpp_c40 --config.model.init_from=/ckpt/lisiam_p2/export

Phases [P]: (1) backbone + OCR + aux head + segmentation decoder only, ~146k iterations
(losses not in the release [I]: L_seg + L_li + 0.4 L_aux); (2) those frozen, SCU + MT + MLP
with L_cls, 16.2k iterations (90 epochs x 180 [R]); (3) everything, 324k iterations (1800 x
180 [R]) with L_cls + L_seg + L_li + 0.4 L_aux. Each phase: SGD momentum 0.9, coupled weight
decay 5e-4, lr 0.002, batch 32, poly schedule (power 0.9, floor 1 % of lr0) restarted per
phase. Frozen modules' BatchNorm statistics still update (as in torch's train mode).
Validation every 30 epochs of 180 iterations (the release), best on val frame AUC;
phase 1 trains no classifier, so it keeps its last model (validated only at the end).
Input 299 px, mean/std 0.5, RGB (the release's BGR only with its checkpoints:
--config.model.channel_order=bgr). No arg: phase 3.
"""

from sjedd_jax import config as config_lib
from sjedd_jax.detectors import lisiam

STEPS = {"phase1": 146_000, "phase2": 16_200, "phase3": 324_000}
EVAL_EVERY = 30 * 180


def get_config(arg=None):
  phase = arg or "phase3"
  c = config_lib.base_config("lisiam")
  c.data.kind = "manifest"
  c.data.dir = ""                      # FF++ crops (scripts/preprocess_ffpp.py) with forgery masks
  c.data.image_size = 299
  c.data.balance_real = True
  c.lisiam.masks = "manifest"          # forgery_mask of each record (scripts/make_masks.py)
  c.model.preset = "lisiam"
  c.model.require_pretrained = True    # phase 1: ImageNet Xception; phases 2-3: the previous export
  c.batch_size = 32
  c.eval_batch_size = 64
  lisiam.apply_phase(c, phase)
  c.total_steps = STEPS[phase]
  c.eval_every = c.total_steps if phase == "phase1" else EVAL_EVERY
  c.ckpt_every = EVAL_EVERY
  c.log_every = 100
  return c
