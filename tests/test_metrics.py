"""Metrics against hand-computed values on tiny cases."""

import json
import math
import warnings

import numpy as np
import pytest

from sjedd_jax import metrics


# real {0.1, 0.5}, fake {0.5, 0.9}: the 0.5 tie gives a diagonal ROC segment.
P_TIE = [0.1, 0.5, 0.5, 0.9]
Y_TIE = [0, 0, 1, 1]


def test_frame_metrics_hand_computed():
  r = metrics.frame_metrics(P_TIE, Y_TIE)
  # AUC: fake>real pairs: (.5,.1)=1, (.5,.5)=.5, (.9,*)=2 -> 3.5/4.
  assert r["auc"] == pytest.approx(0.875)
  # AP: at .9 P=1 R=.5; at .5 P=2/3 R=1 -> .5*1 + .5*2/3.
  assert r["ap"] == pytest.approx(0.5 + 1 / 3)
  # ROC (0,0) (0,.5) (.5,1) (1,1): FPR=FNR crosses mid-diagonal at .25.
  assert r["eer"] == pytest.approx(0.25)
  # ACC at 0.5 is strict (p > 0.5 is fake): the fake 0.5 is missed.
  assert r["acc"] == pytest.approx(0.75)
  assert r["acc_real"] == 1.0 and r["acc_fake"] == 0.5
  assert (r["n"], r["n_real"], r["n_fake"]) == (4, 2, 2)


def test_known_ranking_and_eer_vertex():
  # Perfect ranking.
  r = metrics.frame_metrics([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1])
  assert r["auc"] == 1.0 and r["eer"] == 0.0 and r["acc"] == 1.0
  # Inverted ranking.
  r = metrics.frame_metrics([0.9, 0.8, 0.2, 0.1], [0, 0, 1, 1])
  assert r["auc"] == 0.0 and r["eer"] == 1.0
  # Symmetric interleaving real {.1,.3}, fake {.2,.4}: AUC 3/4, EER exactly at vertex .5.
  r = metrics.frame_metrics([0.1, 0.2, 0.3, 0.4], [0, 1, 0, 1])
  assert r["auc"] == pytest.approx(0.75) and r["eer"] == pytest.approx(0.5)


def test_roc_eer_interpolates():
  # Segment (fpr, tpr) = (0, .2) -> (.4, 1): .4t = 1 - (.2 + .8t) at t = 2/3, EER = .8/3.
  assert metrics.roc_eer([0, 0, 0.4, 1], [0, 0.2, 1, 1]) == pytest.approx(0.8 / 3)


def test_degenerate_inputs():
  with pytest.raises(metrics.MetricsError, match="empty"):
    metrics.frame_metrics([], [])
  with pytest.raises(metrics.MetricsError, match="non-finite"):
    metrics.frame_metrics([0.1, float("nan")], [0, 1])
  with pytest.raises(metrics.MetricsError, match="probabilities"):
    metrics.frame_metrics([-3.0, 2.0], [0, 1])
  with pytest.raises(metrics.MetricsError, match="shape"):
    metrics.frame_metrics([0.1, 0.2], [0, 1, 1])
  with pytest.raises(metrics.MetricsError, match="0/1"):
    metrics.frame_metrics([0.1, 0.2], [0, 2])
  with pytest.warns(UserWarning, match="all 2 samples are fake"):
    r = metrics.frame_metrics([0.7, 0.2], [1, 1])
  assert math.isnan(r["auc"]) and math.isnan(r["eer"]) and math.isnan(r["ap"])
  assert r["acc"] == 0.5


def test_video_metrics_mean_and_consistency():
  p = [0.2, 0.6, 0.9, 0.1, 0.4, 0.45]
  y = [0, 0, 1, 1, 0, 0]
  vids = ["a", "a", "b", "b", "c", "c"]
  v = metrics.aggregate_videos(p, y, vids)
  assert list(v["ids"]) == ["a", "b", "c"]
  np.testing.assert_allclose(v["p_fake"], [0.4, 0.5, 0.425])
  assert list(v["is_fake"]) == [False, True, False]
  r = metrics.video_metrics(p, y, vids)
  assert r["n"] == 3 and r["n_frames"] == 6
  assert r["auc"] == 1.0  # .5 > .425 > .4 although frame AUC is lower
  assert metrics.frame_metrics(p, y)["auc"] < 1.0
  with pytest.raises(metrics.MetricsError, match="video 'b' has inconsistent labels"):
    metrics.video_metrics(p, [0, 0, 1, 0, 0, 0], vids)


def test_node_aucs_masking():
  names = ["face", "a", "b"]
  m = np.array([[0.9, 0.8, 0.1], [0.2, 0.3, 0.9], [0.7, 0.1, 0.5], [0.6, 0.9, 0.5]])
  y = np.array([[1, 1, 0], [0, 0, 1], [1, 0, 1], [1, 0, 0]])
  mask = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]])
  # Unobserved entries hold garbage labels that must not count.
  y_garbage = np.where(mask == 1, y, 1 - y)
  r = metrics.node_aucs(m, y_garbage, mask, names)
  assert r["face"] == {"auc": 1.0, "n": 4, "n_pos": 3}
  # node a: observed rows 0-2: pos .8 vs neg .3, .1 -> 1.
  assert r["a"]["auc"] == 1.0 and r["a"]["n"] == 3
  # node b: observed rows 0-1: pos .9 vs neg .1 -> 1.
  assert r["b"] == {"auc": 1.0, "n": 2, "n_pos": 1}
  r = metrics.node_aucs(m, y, np.array([[1, 1, 0]] * 4), names)
  assert math.isnan(r["b"]["auc"]) and r["b"]["n"] == 0
  assert r["a"]["auc"] == pytest.approx(2 / 3)  # all rows: pos .8 beats .3 and .1, not .9
  with pytest.raises(metrics.MetricsError, match="shape"):
    metrics.node_aucs(m, y[:, :2], mask, names)


def _two_sets():
  a = metrics.evaluate_predictions(P_TIE, Y_TIE, ["v1", "v1", "v2", "v2"])
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    b = metrics.evaluate_predictions([0.6, 0.7], [1, 1])  # single class, no videos
  return {"CDF": a, "DFDC": b}


def test_results_table_and_write(tmp_path):
  res = _two_sets()
  table = metrics.results_table(res)
  lines = table.strip().splitlines()
  assert lines[0] == "| test set | frame AUC | video AUC | ACC | EER | AP | frames | videos |"
  assert lines[2] == "| CDF | 87.50 | 100.00 | 75.00 | 25.00 | 83.33 | 4 | 2 |"
  assert lines[3] == "| DFDC | n/a | n/a | 100.00 | n/a | n/a | 2 |  |"
  # Mean over finite entries: AUC 87.5, ACC (75 + 100) / 2.
  assert lines[4] == "| **mean** | 87.50 | 100.00 | 87.50 | 25.00 | 83.33 |  |  |"
  jpath, mpath = metrics.write_results(tmp_path / "eval", res)
  loaded = json.loads(open(jpath).read())  # strict JSON: NaN became null
  assert loaded["DFDC"]["frame"]["auc"] is None and loaded["CDF"]["video"]["n"] == 2
  assert open(mpath).read() == table


def test_plot_roc_png(tmp_path):
  path = tmp_path / "plots" / "roc.png"
  rng = np.random.default_rng(0)
  y = rng.integers(0, 2, 50)
  curves = {"CDF": (np.clip(0.5 * y + 0.5 * rng.random(50), 0, 1), y), "FSh": (rng.random(50), y)}
  with pytest.warns(UserWarning, match="single class"):
    metrics.plot_roc({**curves, "one-class": ([0.3, 0.4], [1, 1])}, path)
  data = path.read_bytes()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


def test_accumulator_streams_batches():
  rng = np.random.default_rng(1)
  names = ["face", "a", "b"]
  n = 10
  marg = rng.random((n, 3))
  y = (rng.random((n, 3)) > 0.5).astype(np.float32)
  y[:, 0] = np.arange(n) % 2
  mask = np.ones((n, 3), np.float32)
  vid = np.array([0, 1, 0, 1, 2, 3, 2, 3, 4, 5])
  acc = metrics.Accumulator(node_names=names)
  # Two batches of 6, the second padded with 2 invalid rows.
  pad = lambda a: np.concatenate([a, np.full((2,) + a.shape[1:], 0.5, a.dtype) if a.dtype.kind == "f"
                                      else np.zeros((2,) + a.shape[1:], a.dtype)])
  acc.add(marg[:6], y[:6], mask[:6], video_index=vid[:6])
  acc.add(pad(marg[6:]), pad(y[6:]), pad(mask[6:]), video_index=pad(vid[6:]),
          valid=np.array([True] * 4 + [False] * 2))
  assert len(acc) == n
  got = acc.result()
  want = metrics.evaluate_predictions(marg[:, 0], y[:, 0], vid, marginals=marg, y=y, mask=mask, node_names=names)
  assert got["frame"] == pytest.approx(want["frame"])
  assert got["video"] == pytest.approx(want["video"])
  assert got["nodes"]["a"] == pytest.approx(want["nodes"]["a"])
  with pytest.raises(metrics.MetricsError, match="given for some batches"):
    acc.add(marg[:2], y[:2], mask[:2])
  with pytest.raises(metrics.MetricsError, match="no \\(valid\\) predictions"):
    metrics.Accumulator().result()
