"""The embedded default: a tiny CLIP from random initialisation on the synthetic world.

    python -m sjedd_jax.train --config configs/synthetic.py --workdir /tmp/sjedd_synth

Runs in a few minutes on 2 CPU cores and ends with the held-out frame AUC,
printed and written to ``workdir/metrics.json``.
"""

import ml_collections

from sjedd_jax import config as config_lib


def get_config():
  c = config_lib.base_config()
  c.data.kind = "synthetic"
  c.data.image_size = 64
  c.data.synthetic = ml_collections.ConfigDict(dict(
      num_identities=60, expressions_per_identity=4, image_size=64, seed=0, expand=True))
  c.model.clip = "tiny"
  c.model.pretrained = ""
  c.batch_size = 32
  c.total_steps = 600
  c.optim.lr = 1e-3
  c.optim.schedule = "warmup_cosine"
  c.optim.warmup_steps = 50
  c.optim.weight_decay = 1e-3
  c.weighting.lam_lr = 1e-2
  c.log_every = 25
  c.eval_every = 200
  c.ckpt_every = 200
  return c
