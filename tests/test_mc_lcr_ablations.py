"""The MC-LCR ablation configs (configs/mc_lcr/ablations/, Tables 5/6 and the bi-level weighting) on a
tiny world: every file's whole training step traced (abstractly, with its own model switches, weighting
and optimiser: ``trace_step``). The bi-level step runs compiled in
tests/test_mc_lcr_configs.py's whole twin run."""

from __future__ import annotations

import pytest

from tests.test_mc_lcr import shared_cache, tiny_config
from tests.test_mc_lcr_configs import EXPECTED, trace_step


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
