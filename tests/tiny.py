"""Shrinks a synthetic-world config to test size: a 10-identity 32 px world and the "test" CLIP."""


def shrink(c, cache, *, expand: bool = False):
  """``c`` (a config built on configs/synthetic.py) made tiny, with caches under ``cache``."""
  c.data.cache_dir = str(cache)
  c.data.image_size = 32
  c.data.synthetic.num_identities = 10
  c.data.synthetic.expressions_per_identity = 2
  c.data.synthetic.image_size = 32
  c.data.synthetic.expand = expand
  c.model.clip = "test"
  if "clip_overrides" in c.model and "vision_width" in c.model.clip_overrides:  # keep the test preset's sizes
    c.model.clip_overrides.vision_width, c.model.clip_overrides.text_width = 64, 32
  c.compilation_cache_dir = str(cache / "xla")
  c.batch_size = 8
  c.eval_batch_size = 16
  return c
