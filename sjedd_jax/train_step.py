"""The SJEDD training step: the whole bi-level update as ONE compiled XLA program.

Per step (spec section 5), inside a single ``jax.jit``:
  1. task losses [L1, L2, L3] at theta on the training batch, linearised once;
  2. the virtual step theta' = theta - alpha (g + wd theta);
  3. the primary-loss gradient at theta' on the validation batch;
  4. the finite-difference (or exact JVP) hypergradient;
  5. the optimiser step on lambda (Adam);
  6. the AdamW step on the model with the new lambda, whose gradient is a
     second VJP of the linearisation from 1 (no extra forward pass).

Data parallelism: the batch is sharded over a 1-d ``('data',)`` mesh of all
devices and the state is replicated. ``jit`` (GSPMD) makes every mean, masked
mean and norm global, so N devices compute what 1 device computes on the same
global batch; gradient and finite-difference quantities are all-reduced by
XLA. Multi-host works the same way after ``jax.distributed.initialize``: each
process feeds its own shard (``global_batch``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sjedd_jax import bilevel, losses as losses_lib
from sjedd_jax.hierarchy import LabelHierarchy

PyTree = Any
STEP_KEYS = ("image", "y", "mask")


class TrainState(NamedTuple):
  step: jax.Array               # int32
  params: PyTree                # trainable model parameters
  opt_state: Any                # model optimiser (AdamW) state
  lam_state: bilevel.BilevelState


# ----------------------------------------------------------------- schedules
def release_cosine(base_lr: float, steps_per_epoch: int, t_max: int = 5, eta_min: float = 0.0):
  """PyTorch ``CosineAnnealingLR(T_max)`` stepped once per epoch, as the release does.

  The closed form is periodic: lr(e) = eta_min + (base - eta_min)(1 + cos(pi e / T_max)) / 2
  for epoch e = step // steps_per_epoch (it rises again after T_max epochs).
  """
  if steps_per_epoch < 1 or t_max < 1:
    raise ValueError(f"steps_per_epoch ({steps_per_epoch}) and t_max ({t_max}) must be >= 1")

  def schedule(step):
    epoch = jnp.floor_divide(step, steps_per_epoch).astype(jnp.float32)
    return eta_min + (base_lr - eta_min) * 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / t_max))

  return schedule


def make_schedule(name: str, base_lr: float, *, total_steps: int, steps_per_epoch: int = 1,
                  warmup_steps: int = 0, t_max: int = 5, eta_min: float = 0.0) -> optax.Schedule:
  """Learning-rate schedules by name: constant, cosine, warmup_cosine, release_cosine."""
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
  raise ValueError(f"unknown lr schedule {name!r}; expected constant, cosine, warmup_cosine or release_cosine")


def model_optimizer(schedule: optax.Schedule, weight_decay: float, *, b1: float = 0.9, b2: float = 0.999,
                    eps: float = 1e-8) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay, as torch.optim.AdamW; its default betas and eps) on a schedule."""
  return optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)


# --------------------------------------------------------------- loss function
def make_task_losses_fn(scores_fn: Callable[[PyTree, jax.Array], jax.Array], hierarchy: LabelHierarchy,
                        loss: str = "fidelity") -> Callable:
  """``(params, batch) -> ([L1, L2, L3], aux)`` from a scoring function ``(params, images) -> (B, n)``."""
  levels = tuple(hierarchy.levels)

  def task_losses_fn(params, batch):
    scores = scores_fn(params, batch["image"]).astype(jnp.float32)
    marg = hierarchy.marginals(scores)
    task = losses_lib.task_losses(marg, batch["y"], batch["mask"], levels, loss)
    correct = ((marg[:, 0] > 0.5) == (batch["y"][:, 0] > 0.5)).astype(jnp.float32)
    return task, {"accuracy": jnp.mean(correct)}

  return task_losses_fn


# ----------------------------------------------------------------- the step
def make_weighting(kind: str = "bilevel", *, num_tasks: int = 3, lam_lr: float = 1e-3, lam_init=1.0,
                   method: str = "finite_difference", radius: float = 0.01, update_every: int = 1,
                   fixed: Sequence[float] = (1.0, 1.0, 1.0), dwa_temperature: float = 2.0,
                   dwa_period: int = 1) -> bilevel.AutoLambda:
  """The loss-weight learner: "bilevel" (the paper), "fixed" weights or "dwa" (ablations)."""
  if kind == "bilevel":
    return bilevel.auto_lambda(num_tasks, optimizer=optax.adam(lam_lr), init_value=lam_init,
                               method=method, radius=radius, update_every=update_every, has_aux=True)
  if kind == "fixed":
    return bilevel.fixed_weights(fixed, has_aux=True)
  if kind == "dwa":
    return bilevel.dwa(num_tasks, temperature=dwa_temperature, period=dwa_period, has_aux=True)
  raise ValueError(f"unknown loss weighting {kind!r}; expected 'bilevel', 'fixed' or 'dwa'")


def init_state(params: PyTree, model_opt: optax.GradientTransformation,
               weighting: bilevel.AutoLambda) -> TrainState:
  # One buffer per leaf: a weighting's init may reuse one array for several fields
  # (DWA's lam/last/before), and the compiled step donates every state buffer.
  lam_state = jax.tree.map(lambda x: jnp.array(x, copy=True), weighting.init())
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=model_opt.init(params),
                    lam_state=lam_state)


def make_train_step(task_losses_fn: Callable, weighting: bilevel.AutoLambda,
                    model_opt: optax.GradientTransformation, schedule: optax.Schedule,
                    weight_decay: float, lam_update: bool | None = None) -> Callable:
  """The pure step ``(state, train_batch, val_batch) -> (state, metrics)`` (not yet jitted).

  ``lam_update`` True/False builds the step that always/never updates lambda
  (for ``weighting.update_every`` > 1: one program each, picked on the host);
  None lets the weighting decide from its step count.
  """

  def train_step(state: TrainState, train_batch, val_batch):
    lr = schedule(state.step)
    grads, lam_state, info = weighting.step(state.lam_state, task_losses_fn, state.params, train_batch,
                                            val_batch, lr=lr, weight_decay=weight_decay, update=lam_update)
    updates, opt_state = model_opt.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
        "loss/primary": info["task_losses"][0],
        "loss/global": info["task_losses"][1],
        "loss/local": info["task_losses"][2],
        "loss/weighted": jnp.vdot(lam_state.lam, info["task_losses"]),
        "lambda": info["lam"],
        "hypergradient": info["hypergradient"],
        "accuracy": info["aux"]["accuracy"],
        "grad_norm": optax.tree.norm(grads),
        "update_norm": optax.tree.norm(updates),
        "param_norm": optax.tree.norm(params),
        "lr": lr,
        "val_primary_loss": info["val_primary_loss"],
    }
    new_state = TrainState(step=state.step + 1, params=params, opt_state=opt_state, lam_state=lam_state)
    return new_state, metrics

  return train_step


# ----------------------------------------------------------- data parallelism
def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-d ``('data',)`` mesh over the given devices (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def global_batch(local_batch: dict, mesh: Mesh, keys: Sequence[str] = STEP_KEYS) -> dict:
  """Assembles this process's shard of the batch into global, data-sharded arrays."""
  sharding = batch_sharding(mesh)
  n = mesh.devices.size // jax.process_count()
  out = {}
  for k in keys:
    x = np.asarray(local_batch[k])
    if x.shape[0] % max(n, 1):
      raise ValueError(f"per-process batch {x.shape[0]} of {k!r} is not divisible by the {n} local devices")
    out[k] = jax.make_array_from_process_local_data(sharding, x)
  return out


def compile_train_step(train_step: Callable, mesh: Mesh, donate: bool = True) -> Callable:
  """jit with replicated state, data-sharded batches and a donated state buffer."""
  rep, data = replicated(mesh), batch_sharding(mesh)
  return jax.jit(train_step, in_shardings=(rep, data, data), out_shardings=(rep, rep),
                 donate_argnums=(0,) if donate else ())


def shard_state(state: TrainState, mesh: Mesh) -> TrainState:
  return jax.device_put(state, replicated(mesh))


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  return max(1, math.floor(num_examples / global_batch_size))
