"""A tiny training run of the mil_ranking detector with the bi-level weighting: the sequence metrics of its
evaluation, the export and its round trip, and predict's JSON."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from sjedd_jax import detectors
from sjedd_jax.data import manifest, synthetic_seq
from sjedd_jax.detectors import mil_ranking as mil
from sjedd_jax.detectors.mil_ranking import labels as labels_lib
from tests.test_mil_ranking import FAST_COMPILE, tiny_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  d = tmp_path_factory.mktemp("mil_world")
  return synthetic_seq.ensure_seq_synthetic(d, num_identities=8, frames_per_identity=2, image_size=32,
                                            progress=False, workers=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  return tmp_path_factory.mktemp("mil_run_cache")


@pytest.fixture(scope="module")
def tiny_run(world, cache, tmp_path_factory):
  from sjedd_jax import train
  workdir = tmp_path_factory.mktemp("mil_run")
  config = tiny_config(world, cache, fpn_level="P5")   # 2 x 2 tokens: the smallest program
  config.weighting.kind = "bilevel"     # the exact ("jvp") hypergradient, lambda >= 0, every step
  config.weighting.update_every = 1
  config.weighting.lam_lr = 1e-2
  final = train.run(config, str(workdir), progress=False)   # the trainer's own compile (see FAST_COMPILE)
  return config, str(workdir), final


def test_tiny_run_evaluates_sequence_metrics(tiny_run):
  _, workdir, final = tiny_run
  assert 0.0 <= final["test/frame_auc"] <= 1.0
  train_metrics = final["final_train_metrics"]
  assert any(train_metrics[f"hypergradient/{t}"] != 0 for t in mil.TASK_NAMES)
  assert all(train_metrics[f"lambda/{t}"] >= 0 for t in mil.TASK_NAMES)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  seq = results["test"]["sequence"]
  for k in ("fixed_acc", "adaptive_acc", "multilabel_acc", "exact_set_acc", "pairwise_order_acc", "r2_mean",
            "mil_auc", "max_prob_auc"):
    assert k in seq, k
  for k in ("fixed_acc", "adaptive_acc", "pairwise_order_acc"):
    assert f"{k}_all_original" in seq and 0.0 <= seq[k] <= 1.0
  assert "r2_nose" in seq and seq["num_images"] > 0
  assert mil.summarize(results["test"])["Fixed-Acc"] == seq["fixed_acc"]
  # The test split's all-original baseline, recomputed from the manifest.
  d = tiny_run[0].data.dir
  recs = manifest.read(d, ["test"])
  true = np.asarray([labels_lib.pad(r.sequence) for r in recs])
  from sjedd_jax.detectors.mil_ranking import metrics as seq_metrics
  assert seq["fixed_acc_all_original"] == pytest.approx(
      seq_metrics.fixed_acc(np.zeros_like(true), true))


def test_export_round_trip_and_predict_json(tiny_run, tmp_path):
  from sjedd_jax import inference, predict
  config, workdir, _ = tiny_run
  export = os.path.join(workdir, "export")
  assert os.path.exists(os.path.join(export, mil.EXPORT_MARKER))
  with open(os.path.join(export, detectors.EXPORT_META)) as f:
    assert json.load(f)["detector"] == "mil_ranking"
  loaded, lvars = detectors.load_export(export)
  _, variables = inference.load(config=config, workdir=workdir, checkpoint="best")
  images = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
  predict_fn = jax.jit(loaded.predict, compiler_options=FAST_COMPILE)   # one compilation for both variable sets
  a = predict_fn(*lvars, images)
  b = predict_fn(*variables, images)
  for k in ("p_fake", "probs", "logits", "mil_prob"):
    np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert a["probs"].shape == (4, 5) and a["p_fake"].shape == (4,)
  # predict on a PNG of the test split: one JSON line with the decoded sequence.
  rec = next(r for r in manifest.read(config.data.dir, ["test"]) if r.sequence)
  png = tmp_path / "face.png"
  Image.open(os.path.join(config.data.dir, rec.path)).save(png)
  results = predict.predict_files(loaded, lvars, [str(png)], face_detector=None, progress=False, batch_size=4,
                                  plots_dir=str(tmp_path / "plots"))
  res = json.loads(json.dumps(results[0]))
  assert os.path.getsize(res["plot"]) > 0 and Image.open(res["plot"]).size[0] > 100   # the chart
  assert res["path"] == str(png) and 0.0 <= res["p_fake"] <= 1.0
  assert set(res["components"]) == {"nose", "eye", "eyebrow", "lip", "hair"}
  assert len(res["sequence_ids"]) == 5 and res["sequence"] == [
      labels_lib.components("facial_components")[i - 1] for i in res["sequence_ids"] if i]
  assert "explanation" in res and 0.0 <= res["mil_score"] <= 1.0
  # A broken export is refused with the file named.
  os.remove(os.path.join(export, "params.safetensors"))
  with pytest.raises(FileNotFoundError, match="params.safetensors"):
    detectors.load_export(export)


