"""The embedded default: a tiny CLIP from random initialisation on the synthetic world.

    python -m sjedd_jax.train --config configs/synthetic.py --workdir /tmp/sjedd_synth

Runs in minutes on 2 CPU cores and ends with the held-out frame AUC, printed and
written to ``workdir/metrics.json``. The algorithm is the paper's (hierarchy,
fidelity losses, bi-level lambda every step); what differs from the release
recipe is sized for a CPU and a randomly initialised CLIP: a narrower tiny CLIP,
batch 16, lr 1e-3 with warm-up, and epochs balanced between real and fake faces.
"""

import ml_collections

from sjedd_jax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.data.kind = "synthetic"
  c.data.image_size = 64
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_identities=120, expressions_per_identity=8, image_size=64, seed=0, expand=True))
  c.data.balance_real = True
  c.model.clip = "tiny"
  c.model.clip_overrides = ml_collections.ConfigDict(dict(vision_width=96, text_width=64))
  c.model.pretrained = ""
  c.batch_size = 16
  c.total_steps = 2000
  c.optim.lr = 1e-3
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 1e-3
  c.weighting.lam_lr = 1e-2
  c.log_every = 25
  c.eval_every = 500
  c.ckpt_every = 500
  return c
