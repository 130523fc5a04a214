"""The detector interface: a small tuple of pure functions, in the shape of optax's ``GradientTransformation``.

A detector is everything the shared trainer, evaluator and predictor need to
know about one method, and nothing else::

    detector = detectors.make(config)             # by name: config.detector
    variables = detector.init(config.seed)        # builds the module, loads backbone weights
    losses, new_state, aux = detector.task_losses(variables.params, variables.state, batch, rng, True)
    out = detector.predict(variables.params, variables.state, images)   # {"p_fake": (B,), ...}

* ``params`` are the trainable parameters (what the optimiser and the bi-level
  weighting see); ``state`` is everything else the module holds: BatchNorm running
  statistics (``nnx.BatchStat``), frozen parameters, constants. ``task_losses``
  returns the new state (the BatchNorm statistics of a training forward), and the
  trainer keeps only the one computed at the current parameters.
* ``task_losses(params, state, batch, rng, train) -> (losses (T,), new_state, aux)``:
  one loss per task, named by ``task_names``; ``aux`` holds scalars to log (at
  least ``accuracy``). ``rng`` is the step's key: dropout masks depend on it and on
  nothing else, so every evaluation inside one step (the bi-level passes at
  theta, theta' and theta +- eps d) sees the same masks.
* ``predict(params, state, images) -> {"p_fake": (B,), ...}``: inference mode;
  besides P(fake) whatever the detector explains (SJEDD: node marginals; LiSiam:
  forgery maps; the sequence detector: per-component probabilities).
* ``label_fn(record) -> {key: array}``: a manifest record's training targets; the
  shared pipeline stacks them into the batch under these keys.
* Host-side hooks: ``eval_metrics(outputs, labels) -> dict`` (the detector's own
  metrics over a whole split, merged into the results under ``"detector"`` unless
  it returns top-level keys such as SJEDD's ``"nodes"``; ``labels`` holds the
  ``label_fn`` arrays plus ``is_fake`` and ``video`` (ids, for video-level votes)),
  ``describe(outputs) -> dict`` (JSON fields of ``predict`` for one file: outputs
  averaged over its faces), ``plot(outputs, path, *, title, image, threshold[,
  face])`` (a picture for one file; ``face``: the crop the model saw), ``export(variables,
  out_dir, config)`` (an inference export ``detectors.load_export`` reads back) and
  ``param_labels(params) -> pytree of group names`` (optimiser groups: per-group
  learning rates, frozen groups), ``bind(params, state)`` (the NNX module with
  these variables, for interactive use) and ``transform`` (a per-example data
  transform run by the shared pipeline: a second view, a forgery mask, a colour
  jitter; ``image_keys`` names the images it returns, which the pipeline normalises).

The NNX module itself is built by ``init``; the pure functions merge its graph
definition with the given ``params`` and ``state``, so they need ``init`` (or a
prebuilt module, ``ModuleHandle.set``) first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx

PyTree = Any


class Variables(NamedTuple):
  """A detector's variables: trainable ``params`` and the rest of the module's ``state``."""
  params: PyTree
  state: PyTree


def _no_metrics(outputs: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict:
  del outputs, labels
  return {}


def _describe_p_fake(outputs: Mapping[str, np.ndarray]) -> dict:
  del outputs
  return {}


class Detector(NamedTuple):
  """A face-forgery detector (see the module docstring)."""
  name: str
  task_names: tuple[str, ...]
  batch_keys: tuple[str, ...]                 # training-batch keys the losses read ("image" + labels)
  label_fn: Callable[[Any], dict[str, np.ndarray]]
  init: Callable[[Any], Variables]
  task_losses: Callable[..., tuple[jax.Array, PyTree, dict]]
  predict: Callable[[PyTree, PyTree, jax.Array], dict[str, jax.Array]]
  image_size: int
  mean: tuple[float, float, float]            # input normalisation of the backbone, [0, 1] scale
  std: tuple[float, float, float]
  primary: tuple[float, ...] | None = None    # outer-loss task weights of the bi-level weighting (default: task 0)
  eval_metrics: Callable[[Mapping, Mapping], dict] = _no_metrics
  describe: Callable[[Mapping], dict] = _describe_p_fake
  plot: Callable[..., Any] | None = None
  export: Callable[..., str] | None = None
  param_labels: Callable[[PyTree], PyTree] | None = None
  bind: Callable[[PyTree, PyTree], Any] | None = None   # (params, state) -> the NNX module (notebooks, tests)
  transform: Callable[..., Any] | None = None  # per-example data transform (pipeline.DataConfig.transform)
  image_keys: tuple[str, ...] = ("image",)     # the transform's uint8 images the pipeline normalises
  # (params, model_state, train_batch) -> train_batch: a pre-pass at theta, once per step, before the
  # weighting's passes (values the bi-level passes at theta, theta', theta +- eps d must share, e.g.
  # the MIL detector's stop-gradient rank weights). None: no pre-pass (the step's program is unchanged).
  prepare: Callable[[PyTree, PyTree, Mapping], Mapping] | None = None
  # ``jax.jit`` compiler options of the detector's programs (training step, ``predict``):
  # ``xla_cpu.compiler_options(config.model.cpu_kernels)``. None: XLA's defaults.
  compiler_options: Mapping[str, str] | None = None

  @property
  def num_tasks(self) -> int:
    return len(self.task_names)

  def primary_weights(self) -> tuple[float, ...]:
    if self.primary is not None:
      return tuple(float(w) for w in self.primary)
    return (1.0,) + (0.0,) * (self.num_tasks - 1)


class ModuleHandle:
  """The graph definition of a detector's NNX module, set when the module is built.

  ``split(module)`` sets it and returns ``Variables``; ``merge(params, state)``
  rebuilds the module for a pure forward pass. ``trainable`` is the nnx filter of
  the parameters the optimiser updates (everything else goes to ``state``).
  """

  def __init__(self, name: str, trainable: Callable[[Any], Any] | None = None):
    self.name = name
    self._trainable = trainable
    self.graphdef = None
    self.module = None

  def split(self, module: nnx.Module) -> Variables:
    trainable = self._trainable(module) if self._trainable is not None else nnx.Param
    graphdef, params, state = nnx.split(module, trainable, ...)
    self.graphdef, self.module = graphdef, module
    return Variables(params, state)

  def state_of(self, module: nnx.Module) -> PyTree:
    """The module's non-trainable state (e.g. BatchNorm statistics updated by a training forward),
    with the structure of ``Variables.state``."""
    trainable = self._trainable(module) if self._trainable is not None else nnx.Param
    return nnx.split(module, trainable, ...)[2]

  def merge(self, params, state) -> nnx.Module:
    if self.graphdef is None:
      raise RuntimeError(f"detector {self.name!r}: call detector.init(...) (or load an export) before "
                         "using its task_losses/predict")
    # copy=True: fresh Variable objects at the current trace level, so a training forward can update
    # BatchNorm statistics inside jit / linearize (NNX refuses to mutate variables of an outer trace).
    return nnx.merge(self.graphdef, params, state, copy=True)


def check_outputs(name: str, out: Mapping[str, Any], batch_size: int) -> None:
  """Fails clearly when a detector's ``predict`` lacks ``p_fake`` of shape (B,)."""
  p = out.get("p_fake") if isinstance(out, Mapping) else None
  if p is None or tuple(p.shape) != (batch_size,):
    raise ValueError(f"detector {name!r}: predict must return a dict with 'p_fake' of shape ({batch_size},), "
                     f"got {None if p is None else tuple(p.shape)}")


def tree_labels(params: PyTree, rules: Sequence[tuple[str, str]], default: str) -> PyTree:
  """Optimiser group names for ``params`` by path: the first ``(substring, label)`` rule that matches.

  A path is the ``/``-joined key path of the parameter (``"backbone/layer1/0/conv1/kernel"``).
  """

  def label(path, _):
    key = "/".join(str(getattr(p, "key", getattr(p, "idx", getattr(p, "name", p)))) for p in path)
    for sub, lab in rules:
      if sub in key:
        return lab
    return default

  return jax.tree_util.tree_map_with_path(label, params)
