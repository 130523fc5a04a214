"""Labels, losses, metrics and modules of the contrastive-MIL ranking detector (spec mil_ranking.md)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import os

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sjedd_jax.data import manifest
from sjedd_jax.detectors.mil_ranking import labels
from sjedd_jax.detectors.mil_ranking import losses
from sjedd_jax.detectors.mil_ranking import metrics
from sjedd_jax.detectors.mil_ranking import model as model_lib
from sjedd_jax.detectors.mil_ranking import modules
from tests.test_mil_ranking import FAST_COMPILE

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


# ---------------------------------------------------------------------------
# labels


def test_paper_example_encoding():
  y, r, j = labels.encode((4, 2), 5)
  np.testing.assert_array_equal(y, [0, 1, 0, 1, 0])
  np.testing.assert_array_equal(r, [5, 2, 5, 1, 5])
  assert j == 1
  assert labels.decode(y, r) == (4, 2)
  y0, r0, j0 = labels.encode((), 5)
  np.testing.assert_array_equal(y0, 0)
  np.testing.assert_array_equal(r0, 5)
  assert j0 == 0 and labels.decode(y0, r0) == ()
  assert labels.pad((1, 2, 4)) == [1, 2, 4, 0, 0]
  assert labels.unpad([1, 2, 4, 0, 0]) == (1, 2, 4)
  assert labels.parse_label("[1, 2, 4, 0, 0]") == (1, 2, 4)
  assert labels.parse_label("[0, 0, 0, 0, 0]") == ()
  assert labels.name_of((1, 2, 4), "facial_components") == "nose-eye-lip"
  assert labels.components("facial_attributes") == ("Bangs", "Eyeglasses", "Beard", "Smiling", "Young")
  # Batch form equals the per-sequence one.
  seqs = [(4, 2), (), (1, 2, 3, 4, 5), (5,)]
  enc = labels.encode_padded(np.asarray([labels.pad(s) for s in seqs]), 5)
  for m, s in enumerate(seqs):
    y, r, j = labels.encode(s, 5)
    np.testing.assert_array_equal(enc["y"][m], y)
    np.testing.assert_array_equal(enc["r"][m], r)
    assert enc["J"][m] == j


def test_decode_predictions_order_ties_truncation_gate():
  p = np.asarray([[0.9, 0.7, 0.1, 0.8, 0.2],     # {1,2,4} by decreasing P -> 1, 4, 2
                  [0.6, 0.6, 0.6, 0.1, 0.1],     # ties -> lower index first
                  [0.1, 0.2, 0.3, 0.4, 0.5],     # 0.5 is not > 0.5 -> original
                  [0.9, 0.9, 0.9, 0.9, 0.9]])
  out = labels.decode_predictions(p)
  np.testing.assert_array_equal(out, [[1, 4, 2, 0, 0], [1, 2, 3, 0, 0], [0] * 5, [1, 2, 3, 4, 5]])
  np.testing.assert_array_equal(labels.decode_predictions(p, num_slots=2)[0], [1, 4])
  gated = labels.decode_predictions(p, mil_scores=np.asarray([0.9, 0.2, 0.9, 0.5]))
  np.testing.assert_array_equal(gated[1], 0)
  np.testing.assert_array_equal(gated[0], [1, 4, 2, 0, 0])
  np.testing.assert_array_equal(gated[3], [1, 2, 3, 4, 5])
  # Logits with threshold 0 give the same sequences.
  logit = np.log(p / (1 - p))
  np.testing.assert_array_equal(labels.decode_predictions(logit, threshold=0.0), out)


def _write_csv(path, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write(",file_path,label\n")  # pandas.to_csv with its index column
    for i, (fp, lab) in enumerate(rows):
      f.write(f'{i},{fp},"{lab}"\n')


def _release(tmp_path, subset="facial_components"):
  """A tiny release tree: R/<subset>/annotations/*.csv, R/<subset>/images/<split>/<seq>/*.jpg."""
  rng = np.random.default_rng(0)
  names = labels.components(subset)
  plan = {"train": [(1, 2, 4), (), (5,)], "val": [(3, 1)], "test": [(), (2, 1, 3, 5, 4)]}
  for split, seqs in plan.items():
    rows = []
    for m, seq in enumerate(seqs):
      folder = labels.name_of(seq, subset)
      rel = f"{subset}/images/{split}/{folder}/{m:06d}.png"
      img = rng.integers(0, 255, (8, 8, 3), np.uint8)
      os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
      cv2.imwrite(str(tmp_path / rel), img)
      rows.append((rel, str(labels.pad(seq))))
    _write_csv(labels.annotation_path(tmp_path, subset, split), rows)
  return plan, names


def test_read_release_and_prepare_script(tmp_path):
  plan, names = _release(tmp_path / "R")
  recs = labels.read_release(tmp_path / "R", "facial_components")
  assert [r.sequence for r in recs] == plan["train"] + plan["val"] + plan["test"]
  assert [r.split for r in recs] == ["train"] * 3 + ["val"] + ["test"] * 2
  assert recs[0].path == "facial_components/images/train/nose-eye-lip/000000.png"
  assert recs[0].where.endswith("train.csv:2")

  spec = importlib.util.spec_from_file_location("prepare_seqdeepfake",
                                                os.path.join(ROOT, "scripts", "prepare_seqdeepfake.py"))
  prep = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(prep)
  out = tmp_path / "D"
  assert prep.main(["--root", str(tmp_path / "R"), "--subset", "facial_components", "--out", str(out)]) == 0
  meta = json.loads((out / "dataset.json").read_text())
  assert meta["components"] == list(names) and meta["num_components"] == 5
  assert meta["name"] == "seqdeepfake_facial_components"
  got = manifest.read(out)
  assert len(got) == 6
  for rec, src in zip(got, recs):
    assert os.path.isfile(f"{out}/{rec.path}")  # how pipeline.LoadExample opens it
    assert rec.sequence == list(src.sequence) and rec.split == src.split
    assert rec.is_fake == int(bool(src.sequence)) and rec.video_id == rec.path and rec.identity == ""
    assert rec.source == ("seq_facial_components" if src.sequence else "real")
  # Re-running (existing link) works; relative paths without a link also resolve.
  assert prep.main(["--root", str(tmp_path / "R"), "--subset", "facial_components", "--out", str(out)]) == 0
  out2 = tmp_path / "D2"
  prep.prepare(str(tmp_path / "R"), "facial_components", str(out2), symlink=False)
  assert all(os.path.isfile(f"{out2}/{r.path}") for r in manifest.read(out2))
  # A missing image is refused, naming the CSV line.
  os.remove(tmp_path / "R" / recs[1].path)
  with pytest.raises(prep.PrepareError, match=r"train\.csv:3"):
    prep.prepare(str(tmp_path / "R"), "facial_components", str(tmp_path / "D3"))


@pytest.mark.parametrize("label,msg", [
    ("[1, 2, 9, 0, 0]", "out of range"),
    ("[1, 2, 1, 0, 0]", "repeated"),
    ("[1, 0, 2, 0, 0]", "non-zero id after a 0"),
    ("[1, 2, 4, 0]", "expected 5 slots"),
    ("1, 2, 4, 0, 0", "bracketed"),
    ("[1, x, 4, 0, 0]", "non-integer"),
])
def test_malformed_label_names_file_and_row(tmp_path, label, msg):
  path = tmp_path / "facial_components" / "annotations" / "train.csv"
  _write_csv(str(path), [("a.png", "[1, 0, 0, 0, 0]"), ("b.png", label)])
  with pytest.raises(labels.SequenceError, match=msg) as e:
    labels.read_csv(path, "train")
  assert f"{path}:3" in str(e.value)


def test_repeated_file_path_and_missing_column(tmp_path):
  path = tmp_path / "facial_components" / "annotations" / "train.csv"
  _write_csv(str(path), [("a.png", "[1, 0, 0, 0, 0]"), ("b.png", "[0, 0, 0, 0, 0]"),
                         ("a.png", "[2, 0, 0, 0, 0]")])
  with pytest.raises(labels.SequenceError, match=r"train\.csv:4: file_path 'a.png' repeats line 2"):
    labels.read_csv(path, "train")
  # Across splits.
  _write_csv(str(path), [("a.png", "[1, 0, 0, 0, 0]")])
  _write_csv(labels.annotation_path(tmp_path, "facial_components", "val"), [("a.png", "[1, 0, 0, 0, 0]")])
  with pytest.raises(labels.SequenceError, match=r"val\.csv:2: file_path 'a.png' repeats .*train\.csv:2"):
    labels.read_release(tmp_path, "facial_components", ("train", "val"))
  bad = tmp_path / "bad.csv"
  bad.write_text("path,label\nx.png,\"[0, 0, 0, 0, 0]\"\n")
  with pytest.raises(labels.SequenceError, match=r"bad\.csv:1: missing column\(s\) \['file_path'\]"):
    labels.read_csv(bad, "test")


# ---------------------------------------------------------------------------
# losses


def _random_u(rng, b, n):
  return np.sort(rng.uniform(0.0, 1.0, (b, n)).astype(np.float32) ** rng.uniform(0.2, 3.0, (b, 1)), axis=1)


def test_sorted_upper_triangle():
  s = jax.random.uniform(jax.random.key(0), (2, 6, 6))
  u = np.asarray(losses.sorted_upper_triangle(s))
  i, j = np.triu_indices(6, 1)
  np.testing.assert_array_equal(u, np.sort(np.asarray(s)[:, i, j], axis=1))
  assert u.shape == (2, 15) and losses.num_pairs(6) == 15


def test_gaps_nonnegative_and_tanh_equals_eq6_and_bruteforce_max():
  rng = np.random.default_rng(1)
  u = _random_u(rng, 6, 190)  # N = 20 tokens
  c = 1.0 - u.astype(np.float64)
  n = u.shape[1]
  gaps = np.asarray(losses.contrast_gaps(jnp.asarray(u)))  # every k
  assert gaps.shape == (6, n - 1) and np.all(gaps >= 0)
  brute = np.stack([[c[b, :k].mean() - c[b, k:].mean() for k in range(1, n)] for b in range(6)])
  np.testing.assert_allclose(gaps, brute, atol=2e-6)
  # Eq. 6's exponential form equals tanh(D / (2 tau)).
  k = np.arange(1, n)
  up = np.stack([[c[b, :kk].mean() for kk in k] for b in range(6)])
  um = np.stack([[c[b, kk:].mean() for kk in k] for b in range(6)])
  for tau in (0.1, 0.5):
    p_exp = np.asarray(losses.mil_probability_exp(jnp.asarray(up), jnp.asarray(um), tau))
    np.testing.assert_allclose(np.tanh(gaps / (2 * tau)), p_exp, atol=2e-5)
  # "all" grid: the max equals the brute-force max; the default grid is a subset (<=).
  np.testing.assert_allclose(np.asarray(losses.max_gap(jnp.asarray(u), "all")), brute.max(1), atol=2e-6)
  grid = losses.k_values(n, 100)
  assert grid[0] == 1 and grid[-1] == n - 1 and len(grid) == 100
  np.testing.assert_allclose(np.asarray(losses.max_gap(jnp.asarray(u), 100)), brute[:, grid - 1].max(1),
                             atol=2e-6)
  # Large n in float32 stays >= 0 (forward and backward prefix sums).
  big = _random_u(rng, 2, 32640)
  assert float(jnp.min(losses.contrast_gaps(jnp.asarray(big), losses.k_values(32640, "all")))) >= 0.0


def test_stable_log_forms_and_finite_gradients_at_zero_gap():
  d = jnp.asarray([0.0, 1e-4, 0.05, 0.3, 2.0, 10.0])
  neg_log_p, neg_log_not = losses.neg_log_mil(d, tau=0.1)
  p = np.tanh(np.asarray(d, np.float64) / 0.2)
  fin = np.asarray(d) <= 2.0  # where the naive float64 form is still finite
  np.testing.assert_allclose(np.asarray(neg_log_not)[fin], -np.log1p(-p[fin]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(neg_log_not)[-1], 100.0 - np.log(2.0), rtol=1e-6)  # softplus(100)
  ok = np.asarray(d) > 0
  np.testing.assert_allclose(np.asarray(neg_log_p)[ok], -np.log(p[ok]), rtol=1e-5)
  assert np.all(np.isfinite(np.asarray(neg_log_p)))
  cfg = losses.LossConfig()
  u = jnp.full((2, 120), 0.7)  # all equal: D_k = 0 for every k
  for grid in (100, "all"):
    c = dataclasses.replace(cfg, k_grid=grid)
    g = jax.jit(jax.grad(lambda uu, cc=c: jnp.sum(losses.cls_per_example(uu, jnp.asarray([0, 1]), cc)[0])),
                compiler_options=FAST_COMPILE)(u)
    assert np.all(np.isfinite(np.asarray(g)))
  # Real image with all u = 1: zero loss.
  loss, prob = losses.cls_per_example(jnp.ones((1, 10)), jnp.asarray([0]), cfg)
  np.testing.assert_allclose(np.asarray(loss), 0.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(prob), 0.0, atol=1e-6)


def test_rank_weights_cases():
  enc = labels.encode_padded(np.asarray([[4, 2, 0, 0, 0], [4, 2, 0, 0, 0], [0] * 5, [1, 2, 3, 4, 5]]), 5)
  f = jnp.asarray([
      [0.1, 2.0, 0.0, 3.0, -1.0],    # perfect: o(4) = 1, o(2) = 2 -> 0 on Y, alpha elsewhere
      [0.1, 3.0, 2.5, 2.0, -1.0],    # o = (4, 1, 2, 3, 5): 2 at 1 (r 2), 4 at 3 (r 1), 3 genuine at 2 <= |Y|
      [5.0, 4.0, 3.0, 2.0, 1.0],     # real: alpha everywhere
      [1.0, 1.0, 1.0, 1.0, 1.0],     # all tied -> o = (1..5) = r: all 0
  ])
  w = np.asarray(losses.rank_weights(f, jnp.asarray(enc["y"]), jnp.asarray(enc["r"]), alpha=2.0))
  np.testing.assert_array_equal(w[0], [2, 0, 2, 0, 2])
  np.testing.assert_array_equal(w[1], [2, 2 * 1, 2 * 3, 2 * 2, 2])
  np.testing.assert_array_equal(w[2], 2.0)
  np.testing.assert_array_equal(w[3], 0.0)
  np.testing.assert_array_equal(np.asarray(losses.predicted_ranks(f))[1], [4, 1, 2, 3, 5])
  # Stop-gradient: no gradient flows through the weights.
  g = jax.grad(lambda x: jnp.sum(losses.rank_weights(x, jnp.asarray(enc["y"]), jnp.asarray(enc["r"]))))(f)
  np.testing.assert_array_equal(np.asarray(g), 0.0)


def _batch_and_outputs(seed=0, b=4, num=5, n=45):
  rng = np.random.default_rng(seed)
  seqs = np.asarray([[4, 2, 0, 0, 0], [0] * 5, [1, 3, 5, 0, 0], [2, 0, 0, 0, 0]])[:b]
  enc = labels.encode_padded(seqs, num)
  batch = {"y": jnp.asarray(enc["y"]), "r": jnp.asarray(enc["r"]), "J": jnp.asarray(enc["J"])}
  out = {"fU": jnp.asarray(rng.normal(size=(b, num)), jnp.float32),
         "fV": jnp.asarray(rng.normal(size=(b, num)), jnp.float32),
         "u": jnp.asarray(_random_u(rng, b, n))}
  out["f"] = 0.5 * (out["fU"] + out["fV"])
  return out, batch


def test_loss_vector_values_jit_and_precomputed_weights():
  out, batch = _batch_and_outputs()
  cfg = losses.LossConfig()
  vec, aux = jax.jit(losses.loss_vector_and_aux, static_argnums=2, compiler_options=FAST_COMPILE)(out, batch, cfg)
  lv = jax.jit(losses.loss_vector, static_argnums=2, compiler_options=FAST_COMPILE)
  assert vec.shape == (4,) and np.all(np.isfinite(np.asarray(vec)))
  # Reference in numpy.
  y = np.asarray(batch["y"], np.float64)

  def bce(f):
    f = np.asarray(f, np.float64)
    return -(y * np.log(1 / (1 + np.exp(-f))) + (1 - y) * np.log(1 / (1 + np.exp(f)))).sum(1)

  np.testing.assert_allclose(vec[1], bce(out["fU"]).mean(), rtol=1e-5)
  np.testing.assert_allclose(vec[2], bce(out["fV"]).mean(), rtol=1e-5)
  w = np.asarray(aux["rank_weights"])
  f = np.asarray(out["f"], np.float64)
  lr = (w * -(y * np.log(1 / (1 + np.exp(-f))) + (1 - y) * np.log(1 / (1 + np.exp(f))))).sum(1)
  np.testing.assert_allclose(vec[3], lr.mean(), rtol=1e-5)
  u = np.asarray(out["u"], np.float64)
  c = 1 - u
  grid = losses.k_values(u.shape[1], 100)
  dstar = np.asarray([max(c[b, :k].mean() - c[b, k:].mean() for k in grid) for b in range(4)])
  p = np.tanh(dstar / 0.2)
  jj = np.asarray(batch["J"])
  ref = np.where(jj == 1, -np.log(p), -np.log1p(-p) + c.mean(1))
  np.testing.assert_allclose(vec[0], ref.mean(), rtol=1e-4)
  np.testing.assert_allclose(aux["mil_prob"], p, rtol=1e-4)
  # Held-fixed weights: same value; different weights change only L_Rank.
  vec2 = lv(out, batch, cfg, aux["rank_weights"])
  np.testing.assert_allclose(vec2, vec, rtol=1e-6)
  vec3 = lv(out, batch, cfg, jnp.zeros_like(aux["rank_weights"]))
  np.testing.assert_allclose(vec3[:3], vec[:3], rtol=1e-6)
  assert float(vec3[3]) == 0.0
  # S input gives the same; "valid" masks padded rows; reg_reduce="sum" scales the real's term.
  s = jnp.ones((4, 10, 10))
  out_s = dict(out, S=s)
  del out_s["u"]
  np.testing.assert_allclose(lv(out_s, batch, cfg)[1:], vec[1:], rtol=1e-6)
  masked = lv(out, dict(batch, valid=jnp.asarray([1, 1, 0, 0])), cfg)
  sub = lv({k: v[:2] for k, v in out.items()}, {k: v[:2] for k, v in batch.items()}, cfg)
  np.testing.assert_allclose(masked, sub, rtol=1e-6)
  summed = lv(out, batch, losses.LossConfig(reg_reduce="sum"))
  np.testing.assert_allclose(summed[0] - vec[0], (c[1].sum() - c[1].mean()) / 4, rtol=1e-4)
  assert float(losses.total(vec, 2.0, 3.0)) == pytest.approx(float(vec[0] + 2 * (vec[1] + vec[2]) + 3 * vec[3]),
                                                             rel=1e-6)
  # Gradients through the loss are finite.
  g = jax.jit(jax.grad(lambda o: losses.total(losses.loss_vector(o, batch, cfg))), compiler_options=FAST_COMPILE)(out)
  assert all(np.all(np.isfinite(np.asarray(v))) for v in g.values())


# ---------------------------------------------------------------------------
# metrics


def test_metrics_hand_computed():
  true = np.asarray([[1, 2, 4, 0, 0], [0, 0, 0, 0, 0], [3, 0, 0, 0, 0]])
  probs = np.asarray([[0.9, 0.7, 0.1, 0.8, 0.2],   # -> [1, 4, 2, 0, 0]
                      [0.1, 0.1, 0.1, 0.1, 0.1],   # -> [0, 0, 0, 0, 0]
                      [0.1, 0.1, 0.9, 0.2, 0.6]])  # -> [3, 5, 0, 0, 0]
  pred = labels.decode_predictions(probs)
  np.testing.assert_array_equal(pred, [[1, 4, 2, 0, 0], [0] * 5, [3, 5, 0, 0, 0]])
  assert metrics.fixed_acc(pred, true) == pytest.approx(12 / 15)
  assert metrics.adaptive_acc(pred, true) == pytest.approx(3 / 6)  # a = 1 + 1 (c = 0) + 1; c = 3 + 1 + 2
  assert metrics.pairwise_order_acc(probs, true) == pytest.approx(2 / 3)
  m = metrics.sequence_metrics(probs, true, component_names=labels.components("facial_components"))
  assert m["fixed_acc"] == pytest.approx(0.8) and m["adaptive_acc"] == pytest.approx(0.5)
  assert m["multilabel_acc"] == pytest.approx(14 / 15) and m["exact_set_acc"] == pytest.approx(2 / 3)
  assert m["pairwise_order_acc"] == pytest.approx(2 / 3)
  assert m["fixed_acc_all_original"] == pytest.approx(11 / 15)
  assert m["adaptive_acc_all_original"] == pytest.approx(1 / 5)
  assert m["multilabel_acc_all_original"] == pytest.approx(11 / 15)
  assert m["exact_set_acc_all_original"] == pytest.approx(1 / 3)
  assert m["pairwise_order_acc_all_original"] == 0.0
  assert "r2_nose" in m and "r2_nose_all_original" in m and m["num_images"] == 3
  # Adaptive-Acc with c_m = 0 only: 1.
  assert metrics.adaptive_acc(np.zeros((2, 5)), np.zeros((2, 5))) == 1.0


def test_r2_hand_computed():
  true = np.asarray([[1, 2, 0, 0, 0], [2, 1, 0, 0, 0], [1, 2, 3, 0, 0], [3, 1, 0, 0, 0]])
  probs = np.asarray([[0.9, 0.8, 0.1], [0.9, 0.8, 0.1], [0.7, 0.8, 0.6], [0.6, 0.2, 0.9]])
  r2 = metrics.r2_per_component(probs, true)
  np.testing.assert_allclose(r2, [0.0, 0.25, 1.0], atol=1e-12)
  assert np.isnan(metrics.r2_per_component(probs[:1], true[:1])).all()  # < 2 images per component


def test_all_original_baseline_on_section9_mix():
  # 27 sequence types (5 of length 1, 10 of 2, 6 of 3, 3 of 4, 3 of 5), 3 each, plus 25 % originals.
  rng = np.random.default_rng(0)
  types = []
  for length, count in ((1, 5), (2, 10), (3, 6), (4, 3), (5, 3)):
    seen = set()
    while len(seen) < count:
      seen.add(tuple(int(i) for i in rng.permutation(5)[:length] + 1))
    types += sorted(seen)
  true = np.asarray([labels.pad(t) for t in types] * 3 + [[0] * 5] * 27)
  m = metrics.sequence_metrics(np.zeros((len(true), 5)), true)
  assert m["fixed_acc_all_original"] == pytest.approx(0.611, abs=1e-3)
  assert m["adaptive_acc_all_original"] == pytest.approx(0.114, abs=1e-3)
  assert m["fixed_acc"] == m["fixed_acc_all_original"]


# ---------------------------------------------------------------------------
# modules


def _features(seed, b=2, size=64, chans=(16, 24, 32)):
  rng = np.random.default_rng(seed)
  return {k: jnp.asarray(rng.normal(size=(b, size // st, size // st, c)), jnp.float32)
          for k, st, c in (("C3", 8, chans[0]), ("C4", 16, chans[1]), ("C5", 32, chans[2]))}


def _jit_apply(head):
  """Jitted pure forward of an NNX module (eager op-by-op dispatch is slow on the shared CPU)."""
  graphdef, state = nnx.split(head)
  fn = jax.jit(lambda st, f, key, train: nnx.merge(graphdef, st)(f, train=train, rng=key), static_argnums=3,
               compiler_options=FAST_COMPILE)
  return lambda f, train=False, rng=None: fn(state, f, rng, train)


def test_mil_head_shapes():
  feats = _features(0)
  chans = {"C3": 16, "C4": 24, "C5": 32}
  for level, tokens in (("P4", 16), ("P5", 4), ("P3", 64)):
    kw = dict(dim=32, fpn_level=level, num_layers=1, num_heads=4, ffn_dim=64, return_similarity=True)
    n = tokens * (tokens - 1) // 2
    if level == "P4":  # values
      out = _jit_apply(modules.MILHead(chans, 5, rngs=model_lib.init_rngs(0), **kw))(feats)
      u = np.asarray(out["u"])
      assert np.all(np.diff(u, axis=1) >= 0) and u.min() >= 0 and u.max() <= 1 + 1e-6
      np.testing.assert_allclose(np.diagonal(np.asarray(out["S"]), axis1=1, axis2=2), 1.0, atol=1e-5)
      np.testing.assert_allclose(out["f"], 0.5 * (out["fU"] + out["fV"]), rtol=1e-6)
    else:  # shapes only (abstract evaluation: nothing compiled)
      graphdef, state = nnx.split(nnx.eval_shape(lambda kw=kw: modules.MILHead(chans, 5, rngs=nnx.Rngs(0), **kw)))
      out = jax.eval_shape(lambda st, f, g=graphdef: nnx.merge(g, st)(f), state, feats)
    assert out["fU"].shape == out["fV"].shape == out["f"].shape == (2, 5)
    assert out["u"].shape == (2, n) and out["S"].shape == (2, tokens, tokens)
  with pytest.raises(ValueError, match=r"needs in_channels for \['C3'\]"):
    modules.MILHead({"C4": 24, "C5": 32}, fpn_level="P3", rngs=nnx.Rngs(0))
  with pytest.raises(KeyError, match="C4"):
    modules.FPN({"C4": 24, "C5": 32}, 32, rngs=nnx.Rngs(0))({"C5": feats["C5"]})


def test_mil_head_dropout_rng_qk_mode_and_grad():
  """Dropout depends only on the explicit key; the jitted loss vector through the head has finite grads."""
  feats = _features(1)
  head = modules.MILHead((16, 24, 32), 5, dim=32, num_layers=2, num_heads=4, ffn_dim=64, pos_mode="qk",
                         rngs=model_lib.init_rngs(0))
  enc = labels.encode_padded(np.asarray([[4, 2, 0, 0, 0], [0] * 5]), 5)
  batch = {k: jnp.asarray(v) for k, v in enc.items()}
  graphdef, params = nnx.split(head)

  @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
  def step(params, feats, batch, key):
    def loss_fn(p):
      out = nnx.merge(graphdef, p)(feats, train=True, rng=key)
      vec = losses.loss_vector(out, batch)
      return losses.total(vec), (vec, out["f"])
    return jax.grad(loss_fn, has_aux=True)(params)

  grads, (vec, fa) = step(params, feats, batch, jax.random.key(0))
  _, (_, fb) = step(params, feats, batch, jax.random.key(0))
  _, (_, fc) = step(params, feats, batch, jax.random.key(1))
  np.testing.assert_array_equal(fa, fb)
  assert not np.allclose(fa, fc)
  assert vec.shape == (4,) and np.all(np.isfinite(np.asarray(vec)))
  assert all(np.all(np.isfinite(np.asarray(g))) for g in jax.tree.leaves(grads))
  assert float(jnp.abs(grads["class_tokens"][...]).sum()) > 0  # the class tokens are trained
  with pytest.raises(ValueError, match="needs a key"):
    step(params, feats, batch, None)


def test_sine_encoding_matches_detr_formula():
  pe = np.asarray(modules.sine_position_encoding(2, 3, 8))
  npf = 4
  dim_t = 10000 ** (2 * (np.arange(npf) // 2) / npf)
  yy = (1 + 1) / (2 + 1e-6) * 2 * np.pi  # row 1
  xx = (2 + 1) / (3 + 1e-6) * 2 * np.pi  # column 2
  row = pe[1 * 3 + 2]
  want_y = [np.sin(yy / dim_t[0]), np.cos(yy / dim_t[1]), np.sin(yy / dim_t[2]), np.cos(yy / dim_t[3])]
  want_x = [np.sin(xx / dim_t[0]), np.cos(xx / dim_t[1]), np.sin(xx / dim_t[2]), np.cos(xx / dim_t[3])]
  np.testing.assert_allclose(row, want_y + want_x, rtol=1e-5, atol=1e-6)
  up = np.asarray(modules.resize_nearest(jnp.arange(6.0).reshape(1, 2, 3, 1), 4, 6))[0, :, :, 0]
  np.testing.assert_array_equal(up, np.repeat(np.repeat(np.arange(6.0).reshape(2, 3), 2, 0), 2, 1))
