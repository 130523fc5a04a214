"""The model optimiser of a config: learning-rate schedules, AdamW / SGD, parameter groups, clipping.

``make(config.optim, ...)`` returns an ``Optimizer``:

* ``tx``: the optax transformation the step applies;
* ``lr(step)``: the current learning rate, a scalar, or a pytree of per-parameter
  rates when groups have their own (the bi-level virtual step needs it);
* ``weight_decay``: the decay of the virtual step, scalar or pytree likewise.

Groups: a detector labels its parameters (``Detector.param_labels``, e.g.
"backbone" / "head"); ``config.optim.lr_mult`` scales a group's learning rate
(``{"backbone": 0.1}``) and ``config.optim.frozen`` names groups that are not
trained at all (zero update, no decay; LiSiam's phases). Without groups the
optimiser is one transformation over all parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from sjedd_jax.config import ConfigError

PyTree = Any
OPTIMIZERS = ("adamw", "adam_l2", "sgd")
SCHEDULES = ("constant", "cosine", "warmup_cosine", "release_cosine", "poly", "warmup_multistep")


# ----------------------------------------------------------------- schedules
def release_cosine(base_lr: float, steps_per_epoch: int, t_max: int = 5, eta_min: float = 0.0):
  """PyTorch ``CosineAnnealingLR(T_max)`` stepped once per epoch, as the SJEDD release does.

  The closed form is periodic: lr(e) = eta_min + (base - eta_min)(1 + cos(pi e / T_max)) / 2
  for epoch e = step // steps_per_epoch (it rises again after T_max epochs).
  """
  if steps_per_epoch < 1 or t_max < 1:
    raise ValueError(f"steps_per_epoch ({steps_per_epoch}) and t_max ({t_max}) must be >= 1")

  def schedule(step):
    epoch = jnp.floor_divide(step, steps_per_epoch).astype(jnp.float32)
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / t_max))

  return schedule


def poly(base_lr: float, total_steps: int, power: float = 0.9, min_ratio: float = 0.01):
  """The poly schedule per iteration: (lr0 - lr_min)(1 - t/T)^power + lr_min, lr_min = min_ratio lr0."""
  total = max(int(total_steps), 1)
  lr_min = base_lr * min_ratio

  def schedule(step):
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / total, 0.0, 1.0)
    return (base_lr - lr_min) * (1.0 - frac) ** power + lr_min

  return schedule


def warmup_multistep(base_lr: float, steps_per_epoch: int, warmup_epochs: int = 20,
                     milestones: Sequence[int] = (70, 120), gamma: float = 0.1):
  """SeqFakeFormer's LambdaLR per epoch: (e + 1) / warmup for e < warmup, then gamma^(#milestones <= e)."""
  spe = max(int(steps_per_epoch), 1)
  ms = jnp.asarray(list(milestones) or [math.inf], jnp.float32)

  def schedule(step):
    e = jnp.floor_divide(step, spe).astype(jnp.float32)
    warm = (e + 1.0) / max(warmup_epochs, 1)
    decayed = gamma ** jnp.sum(ms <= e).astype(jnp.float32)
    return base_lr * jnp.where(e < warmup_epochs, warm, decayed)

  return schedule


def make_schedule(name: str, base_lr: float, *, total_steps: int, steps_per_epoch: int = 1,
                  warmup_steps: int = 0, t_max: int = 5, eta_min: float = 0.0, power: float = 0.9,
                  warmup_epochs: int = 20, milestones: Sequence[int] = (70, 120)) -> optax.Schedule:
  """Learning-rate schedules by name (``SCHEDULES``)."""
  if name == "constant":
    return optax.constant_schedule(base_lr)
  if name == "cosine":
    return optax.cosine_decay_schedule(base_lr, max(total_steps, 1), alpha=eta_min / base_lr if base_lr else 0.0)
  if name == "warmup_cosine":
    warmup_steps = min(max(warmup_steps, 1), max(total_steps - 1, 1))
    return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup_steps, max(total_steps, warmup_steps + 1),
                                              end_value=eta_min)
  if name == "release_cosine":
    return release_cosine(base_lr, steps_per_epoch, t_max, eta_min)
  if name == "poly":
    return poly(base_lr, total_steps, power)
  if name == "warmup_multistep":
    return warmup_multistep(base_lr, steps_per_epoch, warmup_epochs, milestones)
  raise ValueError(f"unknown lr schedule {name!r}; expected one of {', '.join(SCHEDULES)}")


# ----------------------------------------------------------------- optimisers
def adamw(schedule, weight_decay: float, *, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay, as torch.optim.AdamW; its default betas and eps) on a schedule."""
  return optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


def _base(name: str, schedule, weight_decay: float, o) -> optax.GradientTransformation:
  if name == "adamw":
    return adamw(schedule, weight_decay, b1=o.get("b1", 0.9), b2=o.get("b2", 0.999), eps=o.get("eps", 1e-8))
  if name == "adam_l2":  # torch.optim.Adam(weight_decay=wd): L2 added to the gradient
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.adam(schedule, b1=o.get("b1", 0.9), b2=o.get("b2", 0.999), eps=o.get("eps", 1e-8)))
  if name == "sgd":  # torch.optim.SGD(momentum, weight_decay): coupled decay, then momentum
    return optax.chain(optax.add_decayed_weights(weight_decay),
                       optax.sgd(schedule, momentum=o.get("momentum", 0.9) or None, nesterov=False))
  raise ConfigError(f"config.optim.name={name!r}; expected one of {OPTIMIZERS}")


class Optimizer(NamedTuple):
  tx: optax.GradientTransformation
  lr: Callable[[jax.Array], PyTree]          # step -> learning rate (scalar or per-parameter pytree)
  weight_decay: PyTree                       # scalar or per-parameter pytree


def make(o, *, total_steps: int, steps_per_epoch: int, params: PyTree | None = None,
         labels: PyTree | None = None) -> Optimizer:
  """The optimiser of ``config.optim`` (``o``); ``labels`` (a pytree of group names over ``params``)
  enables ``o.lr_mult`` and ``o.frozen``."""
  name = o.get("name", "adamw")
  schedule = make_schedule(o.schedule, o.lr, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                           warmup_steps=o.get("warmup_steps", 0), t_max=o.get("t_max", 5),
                           eta_min=o.get("eta_min", 0.0), power=o.get("poly_power", 0.9),
                           warmup_epochs=o.get("warmup_epochs", 20),
                           milestones=tuple(o.get("milestones", (70, 120))))
  wd = float(o.weight_decay)
  lr_mult: Mapping[str, float] = dict(o.get("lr_mult") or {})
  frozen = tuple(o.get("frozen") or ())
  clip = float(o.get("clip_grad_norm", 0.0) or 0.0)
  if labels is None or (not lr_mult and not frozen):
    if lr_mult or frozen:
      raise ConfigError("config.optim.lr_mult / config.optim.frozen need a detector that labels its "
                        "parameters (Detector.param_labels)")
    tx = _base(name, schedule, wd, o)
    if clip > 0:
      tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return Optimizer(tx, schedule, wd)
  groups = sorted(set(jax.tree.leaves(labels)))
  unknown = sorted((set(lr_mult) | set(frozen)) - set(groups))
  if unknown:
    raise ConfigError(f"config.optim.lr_mult/frozen name group(s) {unknown}; this detector's groups are {groups}")
  transforms = {}
  for g in groups:
    if g in frozen:
      transforms[g] = optax.set_to_zero()
    else:
      m = float(lr_mult.get(g, 1.0))
      transforms[g] = _base(name, (lambda s, m=m: m * schedule(s)), wd, o)
  tx = optax.multi_transform(transforms, labels)
  if clip > 0:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  mult_tree = jax.tree.map(lambda g: 0.0 if g in frozen else float(lr_mult.get(g, 1.0)), labels)
  wd_tree = jax.tree.map(lambda g: 0.0 if g in frozen else wd, labels)

  def lr(step):
    base = schedule(step)
    return jax.tree.map(lambda m: base * m, mult_tree)

  return Optimizer(tx, lr, wd_tree)


# ----------------------------------------------------------------- plateau
class Plateau:
  """``torch.optim.lr_scheduler.ReduceLROnPlateau`` on the host: a learning-rate scale that drops by
  ``factor`` after more than ``patience`` checks without improvement of a validation metric.

  Its value multiplies the schedule inside the compiled step (``TrainState.lr_scale``), so nothing
  recompiles; ``state()``/``load()`` carry it through checkpoints. Defaults are torch's (relative
  threshold 1e-4, no cooldown, no floor).
  """

  def __init__(self, patience: int, factor: float = 0.5, mode: str = "min", threshold: float = 1e-4,
               min_scale: float = 0.0):
    if patience < 1 or not 0.0 < factor < 1.0 or mode not in ("min", "max"):
      raise ConfigError(f"plateau needs patience >= 1, 0 < factor < 1 and mode min/max; got {patience}, "
                        f"{factor}, {mode!r}")
    self.patience, self.factor, self.mode = int(patience), float(factor), mode
    self.threshold, self.min_scale = float(threshold), float(min_scale)
    self.best: float | None = None
    self.bad = 0
    self.scale = 1.0

  def _better(self, value: float) -> bool:
    if self.best is None:
      return True
    if self.mode == "min":
      return value < self.best * (1.0 - self.threshold)
    return value > self.best * (1.0 + self.threshold)

  def update(self, value: float) -> float:
    """Records one validation value; returns the (possibly reduced) scale."""
    if value != value:  # NaN: not an improvement
      self.bad += 1
    elif self._better(value):
      self.best, self.bad = float(value), 0
    else:
      self.bad += 1
    if self.bad > self.patience:
      self.scale = max(self.scale * self.factor, self.min_scale)
      self.bad = 0
    return self.scale

  def state(self) -> dict:
    return {"best": self.best, "bad": self.bad, "scale": self.scale}

  def load(self, state: Mapping[str, Any] | None) -> None:
    if state:
      self.best, self.bad, self.scale = state.get("best"), int(state.get("bad", 0)), float(state.get("scale", 1.0))


def plateau_from_config(o) -> Plateau | None:
  """``config.optim.plateau_patience`` > 0 turns the plateau scale on (checked at every validation)."""
  patience = int(o.get("plateau_patience", 0) or 0)
  if patience <= 0:
    return None
  return Plateau(patience, o.get("plateau_factor", 0.5), o.get("plateau_mode", "min"),
                 o.get("plateau_threshold", 1e-4))
