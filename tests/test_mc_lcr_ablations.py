"""The MC-LCR ablation configs (configs/mc_lcr/ablations/, Tables 5/6 and the bi-level weighting) on a
tiny world: every file's whole training step traced (abstractly, with its own model switches, weighting
and optimiser: ``trace_step``), and two compiled steps of the one code path the other compiled tests do
not take: the bi-level weights (lambda's hypergradient, lambda >= 0; with Adam + L2)."""

from __future__ import annotations

import pytest

from tests.test_mc_lcr import shared_cache, tiny_config
from tests.test_mc_lcr_configs import EXPECTED, check_two_steps, trace_step


@pytest.fixture(scope="module", name="cache")
def cache_fixture(tmp_path_factory):
  return shared_cache(tmp_path_factory)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_ablation_step_traces(name, cache):
  """The row's complete training step, traced without compiling, and its switches."""
  config = tiny_config(cache, f"ablations/{name}.py")
  _, _, metrics = trace_step(config)
  want = EXPECTED[name]
  for key, value in want.items():   # the switch reached the traced config
    section, field = key.split(".")
    got = config[section][field]
    assert (tuple(got) if isinstance(got, (list, tuple)) else got) == value, key
  if config.weighting.kind == "fixed":
    assert tuple(config.weighting.fixed) == want.get("weighting.fixed", (0.5, 0.5))
  else:
    assert "hypergradient" in metrics and config.weighting.nonneg


def test_bilevel_two_training_steps(cache):
  config, metrics = check_two_steps("ablations/bilevel.py", cache, optim_name="adam_l2")
  assert config.weighting.kind == "bilevel" and config.weighting.nonneg and config.optim.name == "adam_l2"
  assert metrics[-1]["loss/supcon"] > 0
