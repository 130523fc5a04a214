"""The training step of any detector: the whole bi-level update as ONE compiled XLA program.

Per step (SJEDD spec section 5), inside a single ``jax.jit``:
  1. the detector's task losses [L_1 .. L_T] at theta on the training batch,
     linearised once (their aux carries the new model state: BatchNorm statistics);
  2. the virtual step theta' = theta - alpha (g + wd theta);
  3. the primary-loss gradient at theta' on the validation batch;
  4. the finite-difference (or exact JVP) hypergradient;
  5. the optimiser step on lambda (Adam);
  6. the model optimiser's step with the new lambda, whose gradient is a
     second VJP of the linearisation from 1 (no extra forward pass).

The step's key ``fold_in(state.rng, step)`` is split into one key for the
training batch and one for the validation batch; every evaluation of a batch
inside the step sees the same key (``batch["rng"]``), so dropout masks do not
turn the finite difference into noise, and a resumed run draws what an
uninterrupted one draws.

Data parallelism: the batch is sharded over a 1-d ``('data',)`` mesh of all
devices and the state is replicated. ``jit`` (GSPMD) makes every mean, masked
mean, norm and batch statistic global, so N devices compute what 1 device
computes on the same global batch (contrastive terms and BatchNorm included);
gradient and finite-difference quantities are all-reduced by XLA. Multi-host
works the same way after ``jax.distributed.initialize``: each process feeds
its own shard (``global_batch``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sjedd_jax import bilevel
from sjedd_jax.config import ConfigError
from sjedd_jax.detectors.interface import Detector

PyTree = Any


class TrainState(NamedTuple):
  step: jax.Array               # int32
  params: PyTree                # trainable model parameters
  model_state: PyTree           # the module's other variables (BatchNorm statistics, frozen parameters)
  opt_state: Any                # model optimiser state
  lam_state: Any                # loss-weight learner state (bilevel.BilevelState, DWAState)
  rng: jax.Array                # base key; step t uses fold_in(rng, t)
  lr_scale: jax.Array           # float32 multiplier of the learning rate (plateau schedule; 1.0 otherwise)


# ----------------------------------------------------------------- weighting
def make_weighting(kind: str = "bilevel", *, num_tasks: int = 3, lam_lr: float = 1e-3, lam_init=1.0,
                   method: str = "finite_difference", radius: float = 0.01, update_every: int = 1,
                   fixed: Sequence[float] = (1.0, 1.0, 1.0), dwa_temperature: float = 2.0,
                   dwa_period: int = 1, primary: Sequence[float] | None = None,
                   nonneg: bool = False) -> bilevel.AutoLambda:
  """The loss-weight learner: "bilevel" (the paper), "fixed" weights or "dwa" (ablations)."""
  if kind == "bilevel":
    return bilevel.auto_lambda(num_tasks, optimizer=optax.adam(lam_lr), init_value=lam_init, primary=primary,
                               method=method, radius=radius, update_every=update_every, has_aux=True,
                               nonneg=nonneg)
  if kind == "fixed":
    if len(tuple(fixed)) != num_tasks:
      raise ValueError(f"fixed weights {tuple(fixed)} must have one value per task ({num_tasks})")
    return bilevel.fixed_weights(fixed, has_aux=True)
  if kind == "dwa":
    return bilevel.dwa(num_tasks, temperature=dwa_temperature, period=dwa_period, has_aux=True)
  raise ValueError(f"unknown loss weighting {kind!r}; expected 'bilevel', 'fixed' or 'dwa'")


def weighting_from_config(config, detector: Detector, steps_per_epoch: int) -> bilevel.AutoLambda:
  """The loss-weight learner of ``config.weighting`` for ``detector``'s tasks."""
  w = config.weighting
  primary = tuple(w.get("primary") or ()) or detector.primary_weights()
  lam_init = w.lam_init
  if isinstance(lam_init, (list, tuple)):
    lam_init = tuple(float(x) for x in lam_init)
  try:
    if len(primary) != detector.num_tasks:
      raise ValueError(f"primary {primary} must have one weight per task {detector.task_names}")
    if isinstance(lam_init, tuple) and len(lam_init) != detector.num_tasks:
      raise ValueError(f"lam_init {lam_init} must be one number or one per task {detector.task_names}")
    return make_weighting(w.kind, num_tasks=detector.num_tasks, lam_lr=w.lam_lr, lam_init=lam_init,
                          method=w.method, radius=w.radius, update_every=w.update_every, fixed=tuple(w.fixed),
                          dwa_temperature=w.get("dwa_temperature", 2.0),
                          dwa_period=w.get("dwa_period", 0) or steps_per_epoch, primary=primary,
                          nonneg=bool(w.get("nonneg", False)))
  except ValueError as e:
    raise ConfigError(f"config.weighting: {e}") from e


def init_state(variables, model_opt: optax.GradientTransformation, weighting: bilevel.AutoLambda,
               seed: int = 0) -> TrainState:
  """The step-0 state: ``variables`` is the detector's ``Variables(params, state)``."""
  params, model_state = variables
  # One buffer per leaf: a weighting's init may reuse one array for several fields
  # (DWA's lam/last/before), and the compiled step donates every state buffer.
  lam_state = jax.tree.map(lambda x: jnp.array(x, copy=True), weighting.init())
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, model_state=model_state,
                    opt_state=model_opt.init(params), lam_state=lam_state,
                    rng=jax.random.key_data(jax.random.key(seed)), lr_scale=jnp.ones((), jnp.float32))


def step_keys(state: TrainState) -> tuple[jax.Array, jax.Array]:
  """The step's keys for the training and the validation batch."""
  key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
  k_train, k_val = jax.random.split(key)
  return k_train, k_val


def detector_losses_fn(detector: Detector, model_state) -> Callable:
  """``(params, batch) -> (losses, aux)`` for the bi-level library; the model state is closed over
  (never differentiated or moved by the virtual step) and the new one comes back in aux."""

  def losses_fn(params, batch):
    losses, new_state, aux = detector.task_losses(params, model_state, batch, batch.get("rng"), True)
    return losses, {**aux, "model_state": new_state}

  return losses_fn


def make_train_step(detector: Detector, weighting: bilevel.AutoLambda, model_opt: optax.GradientTransformation,
                    lr_fn: Callable, weight_decay, lam_update: bool | None = None,
                    scale_lr: bool = False) -> Callable:
  """The pure step ``(state, train_batch, val_batch) -> (state, metrics)`` (not yet jitted).

  ``lr_fn(step)`` is the model optimiser's learning rate (scalar or per-parameter
  pytree) for the virtual step; ``weight_decay`` likewise. ``lam_update``
  True/False builds the step that always/never updates lambda (for
  ``weighting.update_every`` > 1: one program each, picked on the host); None
  lets the weighting decide from its step count. ``scale_lr``: multiply the
  update and the virtual step's lr by ``state.lr_scale`` (plateau schedule).
  """
  names = tuple(detector.task_names)

  def train_step(state: TrainState, train_batch, val_batch):
    lr = lr_fn(state.step)
    if scale_lr:
      lr = jax.tree.map(lambda x: x * state.lr_scale, lr)
    k_train, k_val = step_keys(state)
    train_batch = {**train_batch, "rng": k_train}
    val_batch = {**val_batch, "rng": k_val}
    if detector.prepare is not None:   # once, at theta (Detector.prepare)
      train_batch = dict(detector.prepare(state.params, state.model_state, train_batch))
    losses_fn = detector_losses_fn(detector, state.model_state)
    grads, lam_state, info = weighting.step(state.lam_state, losses_fn, state.params, train_batch,
                                            val_batch, lr=lr, weight_decay=weight_decay, update=lam_update)
    updates, opt_state = model_opt.update(grads, state.opt_state, state.params)
    if scale_lr:
      updates = jax.tree.map(lambda u: u * state.lr_scale, updates)
    params = optax.apply_updates(state.params, updates)
    aux = dict(info["aux"])
    model_state = aux.pop("model_state")
    task = info["task_losses"]
    metrics = {f"loss/{n}": task[i] for i, n in enumerate(names)}
    metrics.update({
        "loss/weighted": jnp.vdot(lam_state.lam, task),
        "lambda": info["lam"],
        "hypergradient": info["hypergradient"],
        **aux,
        "grad_norm": optax.tree.norm(grads),
        "update_norm": optax.tree.norm(updates),
        "param_norm": optax.tree.norm(params),
        "lr": jax.tree.leaves(lr)[0] if not isinstance(lr, jax.Array) else lr,
        "val_primary_loss": info["val_primary_loss"],
    })
    new_state = state._replace(step=state.step + 1, params=params, model_state=model_state,
                               opt_state=opt_state, lam_state=lam_state)
    return new_state, metrics

  return train_step


def abstract_batch(detector: Detector, batch_size: int, image_size: int | None = None) -> dict:
  """``jax.ShapeDtypeStruct``s of a training batch of ``detector`` (for lowering the step without data).

  The label shapes come from the detector's ``label_fn`` on a placeholder real record.
  """
  from sjedd_jax.data import manifest  # pylint: disable=g-import-not-at-top
  s = image_size or detector.image_size
  rec = manifest.Record(path="placeholder.png", source="real", is_fake=0, video_id="v", split="train")
  labels = {k: np.asarray(v) for k, v in detector.label_fn(rec).items()}
  batch = {"image": jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32)}
  batch.update({k: jax.ShapeDtypeStruct((batch_size,) + v.shape, jnp.float32) for k, v in labels.items()})
  if detector.transform is not None:  # the transform's extra keys (a second view, a mask)
    out = detector.transform(np.zeros((s, s, 3), np.uint8), rec, "", np.random.default_rng(0), True)
    for k, v in out.items():
      if k != "image":
        v = np.asarray(v)
        batch[k] = (jax.ShapeDtypeStruct((batch_size, s, s, 3), jnp.float32) if k in detector.image_keys
                    else jax.ShapeDtypeStruct((batch_size,) + v.shape, v.dtype))
  return {k: batch[k] for k in detector.batch_keys if k in batch}


def vector_names(detector: Detector) -> dict[str, tuple[str, ...]]:
  """Names of the entries of the step's vector metrics (for logging ``lambda/<task>``)."""
  return {"lambda": tuple(detector.task_names), "hypergradient": tuple(detector.task_names)}


# ----------------------------------------------------------- data parallelism
def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-d ``('data',)`` mesh over the given devices (default: all devices of all processes)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def global_batch(local_batch: dict, mesh: Mesh, keys: Sequence[str] | None = None) -> dict:
  """Assembles this process's shard of the batch into global, data-sharded arrays.

  ``keys``: the batch entries the step reads (``Detector.batch_keys``); None: all.
  """
  sharding = batch_sharding(mesh)
  n = mesh.devices.size // jax.process_count()
  out = {}
  for k in (keys if keys is not None else tuple(local_batch)):
    if k not in local_batch:
      raise KeyError(f"the batch has no {k!r} (it has {sorted(local_batch)}); the detector needs it")
    x = np.asarray(local_batch[k])
    if x.shape[0] % max(n, 1):
      raise ValueError(f"per-process batch {x.shape[0]} of {k!r} is not divisible by the {n} local devices")
    out[k] = jax.make_array_from_process_local_data(sharding, x)
  return out


def compile_train_step(train_step: Callable, mesh: Mesh, donate: bool = True,
                       compiler_options: Mapping[str, str] | None = None) -> Callable:
  """jit with replicated state, data-sharded batches and a donated state buffer.

  ``compiler_options``: the detector's (``Detector.compiler_options``; None: XLA's defaults).
  """
  rep, data = replicated(mesh), batch_sharding(mesh)
  return jax.jit(train_step, in_shardings=(rep, data, data), out_shardings=(rep, rep),
                 donate_argnums=(0,) if donate else (),
                 compiler_options=dict(compiler_options) if compiler_options else None)


def shard_state(state: TrainState, mesh: Mesh) -> TrainState:
  return jax.device_put(state, replicated(mesh))
