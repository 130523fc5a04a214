"""model.compact_vocab: the templates' token rows only -> the same scores and the same training."""

import os

import jax
import numpy as np
import optax
import pytest

from sjedd_jax import config as config_lib, detectors, optim, train_step as ts
from sjedd_jax.detectors.sjedd import labels
from sjedd_jax.backbones.clip import modeling as clip_lib


def _config(kind="sjedd", compact=False):
  c = config_lib.base_config("sjedd")
  c.model.clip, c.model.pretrained, c.model.compact_vocab = "test", "", compact
  if kind == "jedd":
    c = config_lib.load_config_file(os.path.join(os.path.dirname(__file__), "..", "configs", "jedd_draft.py"), "synthetic")
    c.model.clip, c.model.compact_vocab = "test", compact
    c.model.clip_overrides = {}
  c.data.image_size = 32
  return c


def _batch(rng, n, b=4):
  if n == 10:  # Table I rows
    ys, ms = zip(*[labels.ffpp_label(s) for s in rng.choice(labels.SOURCES, size=b)])
    y, mask = np.stack(ys), np.stack(ms)
  else:        # another graph (the draft's): any 0/1 labels, all observed
    y, mask = rng.integers(0, 2, (b, n)).astype(np.float32), np.ones((b, n), np.float32)
  return {"image": rng.normal(size=(b, 32, 32, 3)).astype(np.float32), "y": y, "observed": mask}


def _train(c, steps=2):
  det = detectors.make(c)
  variables = det.init(c.seed)
  h = det.bind(*variables).hierarchy
  sched = optax.constant_schedule(1e-3)
  opt = optim.adamw(sched, 1e-3)
  # The exact JVP hypergradient: finite differences of two nearly equal losses would make the
  # comparison one of rounding noise (two programs round differently).
  weighting = ts.make_weighting("bilevel", lam_lr=1e-2, method="jvp")
  step = jax.jit(ts.make_train_step(det, weighting, opt, sched, 1e-3))
  state = ts.init_state(variables, opt, weighting)
  rng = np.random.default_rng(0)
  metrics = []
  for _ in range(steps):
    state, m = step(state, _batch(rng, h.num_nodes), _batch(rng, h.num_nodes))
    metrics.append(jax.device_get(m))
  return det.bind(*variables), variables, state, metrics


def test_restrict_vocabulary_keeps_the_text_embeddings():
  from flax import nnx
  clip = clip_lib.CLIP(clip_lib.get_config("test"), rngs=nnx.Rngs(0))
  ids = np.array([[49406, 320, 1125, 49407, 0], [49406, 5777, 49407, 0, 0]], np.int32)
  before = np.asarray(clip.encode_text(ids))
  new = clip_lib.restrict_vocabulary(clip, ids)
  assert clip.config.vocab_size == 6 and clip.text.token_embedding.embedding.shape[0] == 6
  np.testing.assert_array_equal(new, [[4, 1, 2, 5, 0], [4, 3, 5, 0, 0]])  # order kept: end-of-text largest
  np.testing.assert_allclose(np.asarray(clip.encode_text(new)), before, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", ["sjedd", "jedd"])
def test_compact_vocab_trains_exactly_like_the_full_table(kind):
  full_model, full_vars, full, full_m = _train(_config(kind))
  _, small_vars, small, small_m = _train(_config(kind, compact=True))
  n_full = sum(x.size for x in jax.tree.leaves(full_vars.params))
  n_small = sum(x.size for x in jax.tree.leaves(small_vars.params))
  assert n_small < n_full - 40000 * 32  # the 49408-row table is gone
  for a, b in zip(full_m, small_m):
    for k in ("loss/primary", "loss/global", "loss/local", "lambda", "hypergradient", "grad_norm"):
      np.testing.assert_allclose(b[k], a[k], rtol=2e-5, atol=1e-7, err_msg=k)
  # Every parameter but the token table is the same; the table's kept rows are too.
  flat_full = dict(jax.tree_util.tree_flatten_with_path(jax.device_get(full.params))[0])
  flat_small = dict(jax.tree_util.tree_flatten_with_path(jax.device_get(small.params))[0])
  assert flat_full.keys() == flat_small.keys()
  ids_full = np.asarray(full_model.template_ids)
  kept = np.concatenate([[0], np.unique(ids_full[ids_full > 0])])
  for path, a in flat_full.items():
    b = flat_small[path]
    if "token_embedding" in jax.tree_util.keystr(path):
      a = a[kept]
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7, err_msg=jax.tree_util.keystr(path))


def test_compact_vocab_export_round_trip(tmp_path):
  c = _config(compact=True)
  det = detectors.make(c)
  variables = det.init(c.seed)
  det.export(variables, str(tmp_path / "export"), c)
  loaded, loaded_vars = detectors.load_export(str(tmp_path / "export"))
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(loaded.predict(*loaded_vars, x)["marginals"]),
                             np.asarray(det.predict(*variables, x)["marginals"]), atol=1e-6)
