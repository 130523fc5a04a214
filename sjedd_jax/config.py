"""Defaults shared by every config file in configs/ (the release recipe of spec section 6 where it applies)."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  # Data: "synthetic" (generated into data.cache_dir) or "manifest" (a prepared directory).
  c.data = ml_collections.ConfigDict()
  c.data.kind = "manifest"
  c.data.dir = ""
  c.data.cache_dir = "~/.cache/sjedd_jax"
  c.data.image_size = 224
  c.data.train_sources = ml_collections.FieldReference(None, field_type=str)   # comma list; None: all
  c.data.unobserved_as_zero = False      # True: the release's N/A -> 0, unmasked
  c.data.binary_only = False             # True: no relabelling (Table X ablation)
  c.data.perturb_probability = 0.3
  c.data.workers = 0
  c.data.skip_unreadable = False

  # Model.
  c.model = ml_collections.ConfigDict()
  c.model.clip = "ViT-B/32"              # preset, used when no pretrained path is given
  c.model.pretrained = ""                # local CLIP checkpoint (HF dir, OpenAI .pt/.safetensors)
  c.model.require_pretrained = False     # True: refuse to start from random weights
  c.model.tau = 10.0
  c.model.similarity = "dot"             # "dot" (the paper) or "cosine"
  c.model.cosine_tau = 0.01              # tau' of the cosine variant
  c.model.per_level_passes = False       # the release's redundant per-level CLIP passes (benchmarks)
  c.model.head = "text"                  # "text" (joint embedding) or "linear" (image-only)
  c.model.freeze_text = False
  c.model.templates = "release"          # "release" or "keyword"
  c.model.text_context = 0               # 0: longest template (17); 77: full context
  c.model.dtype = "float32"              # compute dtype; "bfloat16" for speed

  c.hierarchy = "ffpp"                   # name, JSON path or dict
  c.loss = "fidelity"                    # or "bce"

  # Loss weighting (spec section 5).
  c.weighting = ml_collections.ConfigDict()
  c.weighting.kind = "bilevel"           # "bilevel", "fixed" or "dwa"
  c.weighting.method = "finite_difference"   # or "jvp"
  c.weighting.lam_lr = 1e-3
  c.weighting.lam_init = 1.0
  c.weighting.radius = 0.01
  c.weighting.update_every = 1
  c.weighting.fixed = (1.0, 1.0, 1.0)
  c.weighting.dwa_temperature = 2.0
  c.weighting.dwa_period = 0             # steps per DWA period; 0: one epoch

  # Model optimiser: AdamW.
  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 6e-7
  c.optim.weight_decay = 1e-3
  c.optim.schedule = "release_cosine"    # constant, cosine, warmup_cosine, release_cosine
  c.optim.t_max = 5                      # release_cosine: half period in epochs
  c.optim.warmup_steps = 0
  c.optim.eta_min = 0.0

  c.batch_size = 32                      # global batch
  c.num_epochs = 20
  c.total_steps = 0                      # >0 overrides num_epochs

  c.log_every = 50
  c.eval_every = 1000                    # validation AUC for the best checkpoint; 0: per epoch
  c.ckpt_every = 1000
  c.keep_ckpts = 3
  c.eval_batch_size = 64
  c.test_sets = ml_collections.FieldReference(None, field_type=str)  # extra "name=dir,..." test sets

  c.compilation_cache_dir = "~/.cache/sjedd_jax/xla"   # persistent XLA cache; "" turns it off
  c.profile_steps = ""                   # "a,b": jax.profiler trace of steps [a, b)
  c.profiler_port = 0                    # >0: start a profiler server on this port

  # Multi-host: set coordinator_address to call jax.distributed.initialize.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 1
  c.distributed.process_id = 0
  return c
