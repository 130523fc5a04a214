"""The MC-LCR ablation configs (configs/mc_lcr/ablations/, Tables 5/6 and the bi-level weighting) on a
tiny world: every file's whole training step traced (abstractly, with its own model switches, weighting
and optimiser), and two compiled steps of the distinct code paths the full model does not take: the
baseline (no SSRB, no frequency branch, alpha = 0) and the bi-level weights (with Adam + L2).
The full model's steps run in tests/test_mc_lcr_configs.py."""

from __future__ import annotations

import jax
import pytest

from sjedd_jax import detectors, optim, train_step as ts
from tests.test_mc_lcr import cache, tiny_config  # noqa: F401  (cache: the shared world and XLA cache)
from tests.test_mc_lcr_configs import EXPECTED, check_two_steps


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_ablation_step_traces(name, cache):  # noqa: F811
  """The config's complete training step, traced without compiling: shapes of the losses and metrics."""
  config = tiny_config(cache, f"ablations/{name}.py")
  det = detectors.make(config)
  variables = jax.eval_shape(lambda: det.init(config.seed))
  opt = optim.make(config.optim, total_steps=2, steps_per_epoch=1, params=variables.params,
                   labels=det.param_labels(variables.params))
  weighting = ts.weighting_from_config(config, det, steps_per_epoch=1)
  step = ts.make_train_step(det, weighting, opt.tx, opt.lr, opt.weight_decay)
  state = jax.eval_shape(lambda v: ts.init_state(v, opt.tx, weighting), variables)
  batch = ts.abstract_batch(det, config.batch_size)
  new_state, metrics = jax.eval_shape(step, state, batch, batch)
  assert metrics["loss/ce"].shape == metrics["loss/supcon"].shape == () and metrics["lambda"].shape == (2,)
  assert jax.tree.structure(new_state.model_state) == jax.tree.structure(state.model_state)
  head = det.bind(*jax.eval_shape(lambda: det.init(0))).head
  assert (head.use_ssrb, head.use_papda) == (config.model.ssrb, config.model.papda)


@pytest.mark.parametrize("name", ["baseline", "bilevel"])
def test_two_training_steps(name, cache):  # noqa: F811
  config, metrics = check_two_steps(f"ablations/{name}.py", cache,
                                    optim_name="adam_l2" if name == "bilevel" else None)
  if name == "baseline":
    assert tuple(config.weighting.fixed) == (1.0, 0.0) and metrics[-1]["loss/supcon"] > 0   # logged, not trained
  else:
    assert config.weighting.kind == "bilevel" and config.weighting.nonneg and config.optim.name == "adam_l2"
