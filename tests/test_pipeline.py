"""grain pipeline: batches, labels, determinism, per-epoch shuffles, resume, eval padding."""

import dataclasses
import os

import jax
import numpy as np
import pytest

from sjedd_jax.data import manifest, pipeline, videos
from sjedd_jax.detectors import sjedd as sjedd_det
from sjedd_jax.detectors.sjedd import hierarchy

LABELS = sjedd_det.make_label_fn(hierarchy.FFPP_NODES)   # SJEDD's: Table I rows, N/A unobserved

SOURCES = ["real", "Deepfakes", "Face2Face", "aug_eye", "real", "NeuralTextures"]
N = 24


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("ds"))
  rng = np.random.default_rng(0)
  recs = []
  for i in range(N + 4):
    src = SOURCES[i % len(SOURCES)]
    path = f"img/{i:03d}.png"
    os.makedirs(os.path.join(d, "img"), exist_ok=True)
    img = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    img[0, 0] = i  # a pixel that names the record
    videos.write_image(os.path.join(d, path), img)
    recs.append(manifest.Record(path=path, source=src, is_fake=int(src != "real"),
                                video_id=f"v{i // 3}", split="train" if i < N else "test"))
  manifest.write(d, recs, {"name": "tiny", "hierarchy": "ffpp"})
  return d


def cfg_for(data_dir, **kw):
  kw.setdefault("batch_size", 4)
  kw.setdefault("label_fn", LABELS)
  return pipeline.DataConfig(data_dir=data_dir, image_size=16, **kw)


def take(it, k):
  return [next(it) for _ in range(k)]


def assert_same(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_batches_and_labels(data_dir):
  cfg = cfg_for(data_dir)
  data = pipeline.load(cfg)
  assert len(data) == N and len(data.video_ids) == N // 3
  b = next(iter(pipeline.train_dataset(cfg, data)))
  assert b["image"].shape == (4, 16, 16, 3) and b["image"].dtype == np.float32
  assert b["y"].shape == b["observed"].shape == (4, 10) and b["y"].dtype == np.float32
  for k in ("is_fake", "video", "index"):
    assert b[k].shape == (4,) and b[k].dtype == np.int32, k
  assert "valid" not in b
  for j, i in enumerate(b["index"]):
    r = data.records[i]
    want = LABELS(r)
    np.testing.assert_array_equal(b["y"][j], want["y"])
    np.testing.assert_array_equal(b["observed"][j], want["observed"])
    assert b["is_fake"][j] == r.is_fake and data.video_ids[b["video"][j]] == r.video_id
  # Options: release labels (N/A as 0, all observed) and the binary-only ablation.
  nodes = hierarchy.FFPP_NODES
  b0 = next(iter(pipeline.train_dataset(
      dataclasses.replace(cfg, label_fn=sjedd_det.make_label_fn(nodes, unobserved_as_zero=True)), data)))
  assert (b0["observed"] == 1).all()
  b1 = next(iter(pipeline.train_dataset(
      dataclasses.replace(cfg, label_fn=sjedd_det.make_label_fn(nodes, binary_only=True)), data)))
  assert (b1["observed"][:, 1:] == 0).all() and (b1["y"][:, 0] == b1["is_fake"]).all()


def test_unperturbed_image_is_the_clip_preprocessed_file(data_dir):
  from sjedd_jax.backbones import clip as clip_backbone
  from sjedd_jax.data import model_input
  cfg = cfg_for(data_dir, perturb_probability=0.0)
  data = pipeline.load(cfg)
  b = next(iter(pipeline.train_dataset(cfg, data)))
  i = b["index"][0]
  want = model_input.preprocess_np(videos.read_image(os.path.join(data_dir, data.records[i].path)), 16, clip_backbone.MEAN, clip_backbone.STD)
  np.testing.assert_allclose(b["image"][0], want, atol=1e-6)


def test_hflip_mirrors_about_half_of_the_training_images(data_dir):
  cfg = cfg_for(data_dir, perturb_probability=0.0, hflip=True)
  data = pipeline.load(cfg)
  clean = pipeline.LoadExample(data, cfg, train=False)  # eval: never flipped
  batches = take(iter(pipeline.train_dataset(cfg, data)), 2 * N // 4)
  flipped = 0
  for b in batches:
    for j, i in enumerate(b["index"]):
      want = clean(i)["image"]
      if np.allclose(b["image"][j], want[:, ::-1]):
        flipped += 1
      else:
        np.testing.assert_allclose(b["image"][j], want)
  assert 0.25 * 2 * N < flipped < 0.75 * 2 * N
  again = take(iter(pipeline.train_dataset(cfg, data)), 2 * N // 4)  # seeded: the same flips
  assert_same(batches, again)


def test_determinism_epochs_and_streams(data_dir):
  cfg = cfg_for(data_dir)
  data = pipeline.load(cfg)
  assert pipeline.steps_per_epoch(cfg, data) == N // 4
  a = take(iter(pipeline.train_dataset(cfg, data)), 2 * N // 4)
  b = take(iter(pipeline.train_dataset(cfg, data)), 2 * N // 4)
  assert_same(a, b)
  ep0 = np.concatenate([x["index"] for x in a[:N // 4]])
  ep1 = np.concatenate([x["index"] for x in a[N // 4:]])
  assert sorted(ep0) == sorted(ep1) == list(range(N))  # each epoch sees every record once
  assert not np.array_equal(ep0, ep1)                   # in a new order
  train_it, val_it = pipeline.train_streams(cfg, data)
  t, v = next(train_it), next(val_it)
  np.testing.assert_array_equal(t["index"], a[0]["index"])
  assert not np.array_equal(t["index"], v["index"])
  # Perturbation happens (p = 0.3) and is reproducible: compare with the unperturbed images.
  clean = pipeline.LoadExample(data, cfg, train=False)
  perturbed = sum(not np.allclose(x["image"][j], clean(x["index"][j])["image"])
                  for x in a for j in range(4))
  assert 0.1 * 2 * N < perturbed < 0.5 * 2 * N


@pytest.mark.parametrize("balance_real", [False, True])
def test_resume_from_state(data_dir, tmp_path, balance_real):
  cfg = cfg_for(data_dir, balance_real=balance_real)
  data = pipeline.load(cfg)
  per_epoch = pipeline.steps_per_epoch(cfg, data)
  it = iter(pipeline.train_dataset(cfg, data))
  take(it, per_epoch - 1)
  state = it.get_state()
  rest = take(it, 4)  # crosses the epoch boundary
  fresh = iter(pipeline.train_dataset(cfg, data))
  fresh.set_state(state)
  assert_same(take(fresh, 4), rest)
  # The same through orbax, for both bi-level streams.
  train_it, val_it = pipeline.train_streams(cfg, data)
  take(train_it, 3), take(val_it, 2)
  pipeline.save_iterators(str(tmp_path / "ckpt"), {"train": train_it, "val": val_it})
  want_t, want_v = take(train_it, 2), take(val_it, 2)
  t2, v2 = pipeline.train_streams(cfg, data)
  pipeline.restore_iterators(str(tmp_path / "ckpt"), {"train": t2, "val": v2})
  assert_same(take(t2, 2), want_t)
  assert_same(take(v2, 2), want_v)


def test_multiprocess_prefetch_matches_and_resumes(data_dir):
  cfg = cfg_for(data_dir)
  data = pipeline.load(cfg)
  want = take(iter(pipeline.train_dataset(cfg, data)), 5)
  mp_cfg = dataclasses.replace(cfg, workers=1)
  it = iter(pipeline.train_dataset(mp_cfg, data))
  got = take(it, 3)
  state = it.get_state()
  assert_same(got, want[:3])
  it2 = iter(pipeline.train_dataset(mp_cfg, data))
  it2.set_state(state)
  assert_same(take(it2, 2), want[3:])


def test_eval_iterator_pads(data_dir):
  cfg = cfg_for(data_dir, split="test", batch_size=3)
  data = pipeline.load(cfg)
  batches = list(pipeline.eval_iterator(cfg, data))
  assert len(batches) == 2 and all(b["image"].shape == (3, 16, 16, 3) for b in batches)
  np.testing.assert_array_equal(np.concatenate([b["valid"] for b in batches]), [1, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(np.concatenate([b["index"] for b in batches]), [0, 1, 2, 3, -1, -1])
  assert (batches[1]["image"][1:] == 0).all()


def test_filters_and_sharding(data_dir, monkeypatch):
  cfg = cfg_for(data_dir, sources=["real", "Face2Face"])
  data = pipeline.load(cfg)
  assert {r.source for r in data.records} == {"real", "Face2Face"} and len(data) == 12
  with pytest.raises(ValueError, match="no records"):
    pipeline.load(cfg_for(data_dir, sources=["FaceSwap"]))
  seen = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  for p in (0, 1):
    monkeypatch.setattr(jax, "process_index", lambda p=p: p)
    full = cfg_for(data_dir, batch_size=2, num_epochs=1)
    seen.append(np.concatenate([b["index"] for b in pipeline.train_dataset(full)]))
    ev = list(pipeline.eval_iterator(cfg_for(data_dir, split="test", batch_size=3)))
    assert len(ev) == 1 and ev[0]["valid"].sum() == 2
  assert len(seen[0]) == len(seen[1]) == N // 2 and not set(seen[0]) & set(seen[1])


def test_unreadable_images(data_dir, tmp_path):
  d = str(tmp_path / "ds")
  recs = manifest.read(data_dir, ["train"])[:8]
  os.makedirs(os.path.join(d, "img"))
  for r in recs:
    os.link(os.path.join(data_dir, r.path), os.path.join(d, r.path))
  os.remove(os.path.join(d, recs[2].path))
  with open(os.path.join(d, recs[2].path), "wb") as f:
    f.write(b"broken")
  manifest.write(d, recs)
  cfg = cfg_for(d, batch_size=8, num_epochs=1, perturb_probability=0.0)
  with pytest.raises(videos.VideoError, match="002.png"):
    list(pipeline.train_dataset(cfg))
  batches = list(pipeline.train_dataset(dataclasses.replace(cfg, skip_unreadable=True)))
  idx = batches[0]["index"]
  assert 2 not in idx and sorted(idx).count(3) == 2  # record 2 replaced by record 3, with its label


def test_tfds_arrayrecord_builder(data_dir, tmp_path):
  """Optional path: the manifest packed into TFDS ArrayRecord shards, read back by grain."""
  pytest.importorskip("importlib_resources")  # TFDS needs it to build outside TensorFlow
  import grain
  from sjedd_jax.data import tfds_manifest
  builder = tfds_manifest.build(data_dir, str(tmp_path / "tfds"))
  src = builder.as_data_source(split="test")
  recs = manifest.read(data_dir)
  assert len(src) == 4 and len(builder.as_data_source(split="train")) == N
  for ex in grain.MapDataset.source(src):
    r = recs[ex["index"]]
    np.testing.assert_array_equal(ex["image"], videos.read_image(os.path.join(data_dir, r.path)))
    assert "y" not in ex and ex["source"].decode() == r.source   # records, not a detector's targets
    assert ex["video_id"].decode() == r.video_id and ex["is_fake"] == r.is_fake


def test_balance_real_gives_half_real_epochs(data_dir):
  cfg = cfg_for(data_dir, balance_real=True, perturb_probability=0.0)
  data = pipeline.load(cfg)
  n_real = sum(1 for r in data.records if not r.is_fake)
  n_fake = len(data) - n_real
  assert 0 < n_real < n_fake
  indices = pipeline._train_indices(cfg, data)
  fake = np.asarray([data.records[i].is_fake for i in indices])
  assert fake.sum() == n_fake and (1 - fake).sum() == n_fake
  assert pipeline.steps_per_epoch(cfg, data) == 2 * n_fake // cfg.batch_size
  assert pipeline.steps_per_epoch(cfg_for(data_dir), data) == len(data) // cfg.batch_size
  # Every batch is half real; an epoch holds every fake once, in a new order each epoch.
  steps = pipeline.steps_per_epoch(cfg, data)
  batches = take(iter(pipeline.train_dataset(cfg, data)), 2 * steps)
  for b in batches:
    assert b["is_fake"].sum() == cfg.batch_size // 2
  epochs = [np.concatenate([b["index"][b["is_fake"] == 1] for b in batches[e * steps:(e + 1) * steps]])
            for e in (0, 1)]
  fakes = [i for i in range(len(data)) if data.records[i].is_fake]
  assert sorted(epochs[0]) == sorted(epochs[1]) == fakes and not np.array_equal(epochs[0], epochs[1])
  assert_same(batches, take(iter(pipeline.train_dataset(cfg, data)), 2 * steps))  # seeded
  with pytest.raises(ValueError, match="must be even"):
    pipeline.train_dataset(cfg_for(data_dir, balance_real=True, batch_size=3), data)
