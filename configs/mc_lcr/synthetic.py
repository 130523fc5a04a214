r"""MC-LCR's synthetic twin (spec mc_lcr.md section 9): a tiny Xception on the 64 px world, 2 CPU cores.

    python -m sjedd_jax.train --config configs/mc_lcr/synthetic.py --workdir /tmp/mc_lcr_synth

The paper's model and losses at the twin's sizes, from random initialisation:

* world: ``synthetic.ensure_synthetic(expand=False)`` (the paper has no expansion),
  120 identities x 8 frames, 64 px, real + 4 families, identity-disjoint splits;
  ``--config.data.synthetic.checkerboard=(0.02,0.04)`` gives the renderer a period-2
  trace g (1 + e (-1)^(x+y)), e ~ U(0.02, 0.04), in the forged region (spec 9's
  frequency-artefact world; ``checkerboard_sources`` picks the families, default all);
* Xception ``tiny`` (taps 29x29x32, 15x15x64, 8x8x128; GF 384); P = 8 -> 64 tokens,
  D = 64, 4 heads, Mixer hidden 64, 2 layers; F_MM 736 -> F_E 256 -> z 64;
* batch 16 = 8 real + 8 fake, no augmentation; dropout 0.5, tau 0.1, alpha 0.5 (fixed
  weights (0.5, 0.5)); AdamW lr 1e-3, weight decay 1e-4, 100 warm-up steps then cosine
  (no plateau at this length), 1000 steps; lambda's Adam lr 1e-2 when
  ``--config.weighting.kind=bilevel``.

Measured results (held-out AUC, SupCon start/end, time, load): docs/mc_lcr.md.
"""

import ml_collections

from sjedd_jax import config as config_lib


def get_config():
  c = config_lib.base_config("mc_lcr")
  c.data.kind = "synthetic"
  c.data.image_size = 64
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_identities=120, expressions_per_identity=8, image_size=64, seed=0, expand=False,
      checkerboard=(), checkerboard_sources=()))   # () = off: the default world, same bytes and hash
  c.data.balance_real = True
  c.data.perturb_probability = 0.0
  c.data.hflip = False
  c.data.exclude_expansion = True      # a cached world expanded in place by another run keeps aug_* records
  c.model.backbone = "tiny"
  c.model.backbone_pretrained = ""
  c.model.require_pretrained = False
  c.model.patch = 8
  c.model.token_dim = 0                # P^2 = 64
  c.model.heads = 4
  c.model.token_hidden = 64
  c.model.channel_hidden = 64
  c.model.mixer_depth = 2
  c.model.fe_dim = 256
  c.model.z_dim = 64
  c.model.remat = "auto"               # blocks recomputed on CPU: the faster plain step at this size (39-41 vs 45-46 ms)
  c.weighting.kind = "fixed"
  c.weighting.fixed = (0.5, 0.5)
  c.weighting.lam_lr = 1e-2
  c.optim.name = "adamw"
  c.optim.lr = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_steps = 100
  c.optim.plateau_patience = 0
  c.batch_size = 16
  c.eval_batch_size = 64
  c.total_steps = 1000
  c.log_every = 25
  c.eval_every = 500
  c.ckpt_every = 500
  return c
