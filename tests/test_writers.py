"""MetricWriter: event files readable back, JSONL content, append and clean resume."""

import json
import math
import os

import jax.numpy as jnp
import numpy as np
import pytest

from sjedd_jax import writers


def _events(d):
  return sorted(f for f in os.listdir(d) if f.startswith("events.out.tfevents."))


def test_jsonl_and_event_file(tmp_path):
  with writers.MetricWriter(tmp_path, is_main=True) as w:
    for s in range(3):
      w.scalars(s, {"train/loss": jnp.float32(1.0 / (s + 1)), "lr": np.float64(0.1), "n": np.int32(7)})
    w.scalars(np.int64(3), {"train/loss": jnp.array([0.125]), "bad": float("nan")})
  recs = writers.read_jsonl(tmp_path)
  assert [r["step"] for r in recs] == [0, 1, 2, 3]
  assert recs[1]["train/loss"] == 0.5 and recs[0]["lr"] == 0.1 and recs[0]["n"] == 7.0
  assert isinstance(recs[0]["n"], float) and recs[0]["time"] > 1e9
  assert recs[3]["bad"] is None  # NaN -> null keeps the line strict JSON
  for line in open(tmp_path / "metrics.jsonl"):
    json.loads(line, parse_constant=lambda c: pytest.fail(f"non-strict JSON constant {c}"))
  (ev,) = _events(tmp_path)
  assert os.path.getsize(tmp_path / ev) > 0
  tb = writers.read_scalars(tmp_path)  # checks TFRecord framing and both CRCs
  assert [s for s, _ in tb["train/loss"]] == [0, 1, 2, 3]
  np.testing.assert_allclose([v for _, v in tb["train/loss"]], [1, 0.5, 1 / 3, 0.125], rtol=1e-6)
  assert math.isnan(tb["bad"][0][1])


def test_append_on_resume_and_truncate(tmp_path):
  with writers.MetricWriter(tmp_path, is_main=True) as w:
    for s in range(5):
      w.scalars(s, {"loss": float(s)})
  # A second writer without resume_step appends, never truncates.
  with writers.MetricWriter(tmp_path, is_main=True, tensorboard=False) as w:
    w.scalars(5, {"loss": 5.0})
  assert [r["step"] for r in writers.read_jsonl(tmp_path)] == [0, 1, 2, 3, 4, 5]
  # Resuming from a checkpoint at step 2 drops the later lines (and a torn last line).
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 6, "lo')
  with pytest.warns(UserWarning, match="dropped 4 line"):
    w = writers.MetricWriter(tmp_path, is_main=True, resume_step=2)
  w.scalars(3, {"loss": 30.0})
  w.close()
  recs = writers.read_jsonl(tmp_path)
  assert [(r["step"], r["loss"]) for r in recs] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]
  # Two event files (restart in the same second must not overwrite the first);
  # the purge step hides the old run's steps >= 3 as TensorBoard would.
  assert len(_events(tmp_path)) == 2
  assert writers.read_scalars(tmp_path)["loss"] == [(0, 0.0), (1, 1.0), (2, 2.0), (3, 30.0)]


def test_truncate_after_helper(tmp_path):
  p = tmp_path / "m.jsonl"
  assert writers.truncate_after(p, 3) == 0  # missing file is fine
  p.write_text("".join(json.dumps({"step": s}) + "\n" for s in (1, 2, 3, 4)))
  assert writers.truncate_after(p, 2) == 2
  assert [r["step"] for r in writers.read_jsonl(p)] == [1, 2]
  p.write_text('{"step": 1}\ngarbage\n{"step": 2}\n')
  with pytest.raises(ValueError, match="m.jsonl:2"):
    writers.truncate_after(p, 5)


def test_non_main_and_disabled_are_noops(tmp_path):
  for kw in ({"is_main": False}, {"enabled": False, "is_main": True}):
    d = tmp_path / str(len(kw))
    with writers.MetricWriter(d, **kw) as w:
      w.scalars(0, {"loss": 1.0})
      w.flush()
    assert not d.exists()
  # Default decides by jax.process_index() (0 in a single-process run).
  with writers.MetricWriter(tmp_path / "main", tensorboard=False) as w:
    assert w.active


def test_bad_values(tmp_path):
  with writers.MetricWriter(tmp_path, is_main=True, tensorboard=False) as w:
    with pytest.raises(ValueError, match="'x' must be a scalar"):
      w.scalars(0, {"x": np.zeros(3)})
    with pytest.raises(ValueError, match="reserved"):
      w.scalars(0, {"step": 1.0})
    with pytest.raises(ValueError, match="step must be an integer"):
      w.scalars(1.5, {"x": 1.0})
  with pytest.raises(RuntimeError, match="closed"):
    w.scalars(0, {"x": 1.0})
