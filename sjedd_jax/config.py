"""Defaults shared by every config file in configs/ (the release recipe of spec section 6 where it applies).

``load_config_file(path, arg)`` loads another config file by path (big_vision
style ``get_config(arg)``), so variants in ``configs/ablations/`` can build on
``configs/ffpp.py`` (no arg) or on ``configs/synthetic.py`` (arg "synthetic")::

    python -m sjedd_jax.train --config configs/ablations/frozen_text.py:synthetic --workdir /tmp/w
"""

import importlib.util
import inspect
import os

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
  c.data.exclude_expansion = False       # True: train without the expansion's aug_* images (Table X)
  c.data.expansion_mode = "regions"      # "regions" (spec 7) or "xray" (Face X-ray-style blending, Table XI)
  c.data.label_table = ""                # "": Table I; "jedd_draft" or a JSON file {source: {node: 0/1/null}}
  c.data.perturb_probability = 0.3
  c.data.hflip = False                   # True: random horizontal flips in training (not the release)
  c.data.workers = 0
  c.data.skip_unreadable = False
  c.data.balance_real = False            # every batch half real, half fake; real faces repeated (not the release)

  # Model.
  c.model = ml_collections.ConfigDict()
  c.model.kind = "sjedd"                 # "sjedd" (this paper) or "jedd" (the earlier draft, models/jedd.py)
  c.model.clip = "ViT-B/32"              # preset, used when no pretrained path is given
  c.model.clip_overrides = ml_collections.ConfigDict()  # CLIPConfig fields over the preset (e.g. patch_size)
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
  c.model.scan_layers = True             # residual blocks as one lax.scan (False: unrolled; docs/performance.md)
  c.model.compact_vocab = False          # True: keep only the templates' token-embedding rows (same outputs)

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
  c.optim.b1 = 0.9                       # AdamW betas and eps (torch.optim.AdamW's defaults)
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
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


def load_config_file(path: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """``get_config(arg)`` of the config file at ``path`` (``get_config()`` when arg is None).

  A relative ``path`` is taken relative to the current directory; config files
  pass ``os.path.join(os.path.dirname(__file__), ...)`` so they work from any cwd.
  """
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path} does not exist")
  name = "sjedd_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config file {path} has no get_config()")
  if arg is None:
    return module.get_config()
  if not inspect.signature(module.get_config).parameters:
    raise TypeError(f"config file {path}: get_config() takes no argument, got {arg!r}")
  return module.get_config(arg)


def base_for_variant(variant_file: str, arg: str | None, base: str = "ffpp.py",
                     twins: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """The config a variant file in ``configs/<sub>/`` builds on.

  ``base`` (relative to ``configs/``) without an arg; with an arg, ``twins[arg]``
  when given, else ``base`` called with that arg. Default twins: "synthetic" ->
  ``synthetic.py`` (the CPU twin on the synthetic world).
  """
  configs_dir = os.path.dirname(os.path.dirname(os.path.abspath(variant_file)))
  twins = {"synthetic": "synthetic.py"} if twins is None else twins
  if arg is None or arg == "":
    return load_config_file(os.path.join(configs_dir, base), None)
  if arg in twins:
    return load_config_file(os.path.join(configs_dir, twins[arg]), None)
  return load_config_file(os.path.join(configs_dir, base), arg)
