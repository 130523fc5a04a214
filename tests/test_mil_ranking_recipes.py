"""Two real training steps of the paper-recipe configs in configs/mil_ranking/ (Seq-DeepFake components and
attributes: parameter groups, frozen stages, clipping, warmup_multistep; FF++ binary: L = 1) on a tiny world."""

from __future__ import annotations

import pytest

from tests.test_mil_ranking_configs import RECIPES, cache, check_two_steps, no_world_generation, world  # noqa: F401


@pytest.mark.parametrize("name", RECIPES)
def test_two_training_steps(name, world, cache):  # noqa: F811
  check_two_steps(name, world, cache)
