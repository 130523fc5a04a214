"""Config defaults shared by every detector, and loading config files (big_vision style ``get_config``).

``load_config_file(path, arg)`` loads another config file by path (big_vision
style ``get_config(arg)``), so variants in ``configs/ablations/`` can build on
``configs/ffpp.py`` (no arg) or on ``configs/synthetic.py`` (arg "synthetic")::

    python -m sjedd_jax.train --config configs/ablations/frozen_text.py:synthetic --workdir /tmp/w
"""

import ast
import importlib.util
import inspect
import os
from typing import Any

import ml_collections


class ConfigError(ValueError):
  """A config that cannot be run, with what is missing and how to get it."""


def base_config(detector: str = "") -> ml_collections.ConfigDict:
  """The fields every run has (data, optimiser, weighting, schedule of the loop), neutral to the detector.

  ``detector`` names a registered detector (``sjedd_jax.detectors.NAMES``); its
  own defaults (``config.model`` and any detector-specific fields, e.g. SJEDD's
  ``hierarchy`` and ``loss``) are added by that detector's ``defaults(config)``.
  Without a name the config has an empty ``model`` and cannot be trained until
  ``config.detector`` is set and the detector's defaults are added.
  """
  c = ml_collections.ConfigDict()
  c.detector = detector
  c.seed = 0

  # Data: "synthetic" (generated into data.cache_dir) or "manifest" (a prepared directory).
  c.data = ml_collections.ConfigDict()
  c.data.kind = "manifest"
  c.data.dir = ""
  c.data.cache_dir = "~/.cache/sjedd_jax"
  c.data.image_size = 224
  c.data.train_sources = ml_collections.FieldReference(None, field_type=str)   # comma list; None: all
  c.data.exclude_expansion = False       # True: train without the expansion's aug_* images (Table X)
  c.data.expansion_mode = "regions"      # "regions" (spec 7) or "xray" (Face X-ray-style blending, Table XI)
  c.data.perturb_probability = 0.3
  c.data.hflip = False                   # True: random horizontal flips in training (not the release)
  c.data.workers = 0
  c.data.skip_unreadable = False
  c.data.balance_real = False            # every batch half real, half fake; real faces repeated (not the release)

  # Model: filled by the detector's defaults.
  c.model = ml_collections.ConfigDict()

  # Loss weighting (SJEDD spec section 5): the bi-level learner of the task weights.
  c.weighting = ml_collections.ConfigDict()
  c.weighting.kind = "bilevel"           # "bilevel", "fixed" or "dwa"
  c.weighting.method = "finite_difference"   # or "jvp"
  c.weighting.lam_lr = 1e-3
  c.weighting.lam_init = 1.0             # a number, or one per task
  c.weighting.radius = 0.01
  c.weighting.update_every = 1
  c.weighting.fixed = (1.0, 1.0, 1.0)    # "fixed": one weight per task
  c.weighting.nonneg = False             # project lambda >= 0 after each update
  c.weighting.primary = ()               # outer-loss task weights; (): the detector's
  c.weighting.dwa_temperature = 2.0
  c.weighting.dwa_period = 0             # steps per DWA period; 0: one epoch

  # Model optimiser (sjedd_jax/optim.py).
  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"                 # "adamw", "adam_l2" (Adam + L2 in the gradient) or "sgd" (momentum)
  c.optim.lr = 6e-7
  c.optim.weight_decay = 1e-3
  c.optim.b1 = 0.9                       # AdamW betas and eps (torch.optim.AdamW's defaults)
  c.optim.b2 = 0.999
  c.optim.eps = 1e-8
  c.optim.schedule = "release_cosine"    # constant, cosine, warmup_cosine, release_cosine
  c.optim.t_max = 5                      # release_cosine: half period in epochs
  c.optim.warmup_steps = 0
  c.optim.eta_min = 0.0
  c.optim.momentum = 0.9                 # sgd
  c.optim.poly_power = 0.9               # schedule "poly"
  c.optim.warmup_epochs = 20             # schedule "warmup_multistep"
  c.optim.milestones = (70, 120)         # schedule "warmup_multistep" (epochs)
  c.optim.clip_grad_norm = 0.0           # > 0: clip the model gradient's global norm
  c.optim.lr_mult = ml_collections.ConfigDict()   # {group: multiplier} (the detector's parameter groups)
  c.optim.frozen = ()                    # groups not trained at all
  c.optim.plateau_patience = 0           # > 0: lr x plateau_factor after that many validations without gain
  c.optim.plateau_factor = 0.5
  c.optim.plateau_metric = "val/frame_log_loss"   # a validation metric (val/frame_auc with mode "max")
  c.optim.plateau_mode = "min"

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
  if detector:
    from sjedd_jax import detectors  # pylint: disable=g-import-not-at-top
    detectors.defaults(detector, c)
  return c


def set_dotted(config: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """``config.a.b.c = value`` from the key ``"a.b.c"``; a missing key is a ``ConfigError``."""
  node = config
  *path, last = key.split(".")
  for i, p in enumerate(path):
    if p not in node:
      raise ConfigError(f"config has no key {'.'.join(path[:i + 1])!r} (setting {key!r})")
    node = node[p]
  node[last] = value


def parse_dotted(config: ml_collections.ConfigDict, key: str, text: str) -> None:
  """``set_dotted`` from command-line text, typed like the value it replaces."""
  node = config
  *path, last = key.split(".")
  for p in path:
    if p not in node:
      raise ConfigError(f"config has no key {key!r}")
    node = node[p]
  old = node[last] if last in node else None
  if isinstance(old, str) or old is None:
    value = text
  elif isinstance(old, bool):
    value = text.lower() in ("1", "true", "yes")
  elif isinstance(old, tuple):
    value = tuple(ast.literal_eval(text))
  else:
    value = type(old)(ast.literal_eval(text))
  set_dotted(config, key, value)


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


# ----------------------------------------------------------------- checks
# Keys that may change when a run is resumed (how long, how often, where results go); every other
# key defines the run (detector, model, data, losses, weighting, optimiser, seed, batch size).
RESUMABLE_KEYS = ("total_steps", "num_epochs", "log_every", "eval_every", "ckpt_every", "keep_ckpts",
                  "eval_batch_size", "test_sets", "compilation_cache_dir", "profile_steps", "profiler_port",
                  "distributed", "data.cache_dir")


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
  out = {}
  items = d.items() if hasattr(d, "items") else []
  for k, v in items:
    key = f"{prefix}{k}"
    if hasattr(v, "items"):
      out.update(_flat(v, key + "."))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def run_defining(config) -> dict[str, Any]:
  """The flat ``{dotted key: value}`` of the config keys that define a run (``RESUMABLE_KEYS`` left out)."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  flat = _flat(d)
  return {k: v for k, v in flat.items()
          if not any(k == r or k.startswith(r + ".") for r in RESUMABLE_KEYS)}


def config_diff(saved, new) -> list[str]:
  """``["key: saved -> new", ...]`` over the run-defining keys of two configs (dicts or ConfigDicts)."""
  a, b = run_defining(saved), run_defining(new)
  out = []
  for k in sorted(set(a) | set(b)):
    va, vb = a.get(k, "<absent>"), b.get(k, "<absent>")
    if va != vb:
      out.append(f"{k}: {va!r} -> {vb!r}")
  return out


def _number(config, key: str):
  node = config
  for p in key.split("."):
    if p not in node:
      return None
    node = node[p]
  return node


# (key, minimum, maximum, integer?) of the numeric fields every run has; the bounds are what a run
# can use, not what is sensible (a learning rate of 5 is allowed, 1e30 and NaN are not).
NUMERIC_CHECKS = (
    ("seed", 0, 2 ** 32 - 1, True), ("batch_size", 1, None, True), ("eval_batch_size", 1, None, True),
    ("total_steps", 0, None, True), ("num_epochs", 0, None, True), ("log_every", 1, None, True),
    ("eval_every", 0, None, True), ("ckpt_every", 1, None, True), ("keep_ckpts", 1, None, True),
    ("optim.lr", 0.0, 10.0, False), ("optim.weight_decay", 0.0, 10.0, False), ("optim.b1", 0.0, 1.0, False),
    ("optim.b2", 0.0, 1.0, False), ("optim.eps", 0.0, 1.0, False), ("optim.warmup_steps", 0, None, True),
    ("optim.eta_min", 0.0, 10.0, False), ("optim.momentum", 0.0, 1.0, False),
    ("optim.clip_grad_norm", 0.0, None, False), ("optim.plateau_patience", 0, None, True),
    ("weighting.lam_lr", 0.0, 10.0, False), ("weighting.radius", 0.0, None, False),
    ("weighting.update_every", 1, None, True), ("data.image_size", 8, 4096, True),
    ("data.perturb_probability", 0.0, 1.0, False), ("data.workers", 0, 512, True),
)


def validate(config) -> None:
  """Refuses numeric config values a run cannot use (NaN, inf, out of range, non-integer counts),
  naming every offending key at once (``ConfigError``)."""
  import math  # pylint: disable=g-import-not-at-top
  problems = []
  for key, lo, hi, integer in NUMERIC_CHECKS:
    v = _number(config, key)
    if v is None:
      continue
    if isinstance(v, bool) or not isinstance(v, (int, float)):
      problems.append(f"config.{key}={v!r} is not a number")
      continue
    if not math.isfinite(v):
      problems.append(f"config.{key}={v!r} is not finite")
    elif integer and v != int(v):
      problems.append(f"config.{key}={v!r} must be a whole number")
    elif (lo is not None and v < lo) or (hi is not None and v > hi):
      rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
      problems.append(f"config.{key}={v!r} must be {rng}")
  for key in ("weighting.lam_init", "weighting.fixed", "weighting.primary"):
    v = _number(config, key)
    for x in (v if isinstance(v, (list, tuple)) else [v] if v is not None else []):
      if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
        problems.append(f"config.{key}={v!r} must hold finite numbers")
        break
  if problems:
    raise ConfigError("invalid config: " + "; ".join(problems))
