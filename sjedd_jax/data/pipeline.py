"""The grain input pipeline over a manifest directory (``sjedd_jax.data.manifest``).

Train: records -> this process's shard -> seeded shuffle (a new order each epoch)
-> load + label-preserving perturbation (``perturb``, seeded per element) + the
backbone's preprocessing (resize, its mean/std) -> batch (drop_remainder) ->
repeat -> optional multiprocess prefetch.
Eval: no shuffle, no perturbation, the last batch padded (``valid`` = 0 there).

The pipeline knows no label table: the detector's ``label_fn(record) -> {key:
array}`` makes each record's targets once, and they travel in the batch under
the detector's keys. Batches are dicts of numpy arrays:

    image    (B, H, W, 3) float32, normalised with ``DataConfig.mean``/``std``
    <labels> (B, ...) float32     the detector's (SJEDD: ``y``, ``observed`` (B, n))
    is_fake  (B,) int32
    video    (B,) int32           index into ``Data.video_ids`` (strings stay on the host)
    index    (B,) int32           index into ``Data.records``
    valid    (B,) int32           eval only: 0 for padding

Usage:

    cfg = DataConfig(data_dir="/data/ffpp_crops", batch_size=32, workers=8, label_fn=detector.label_fn,
                     mean=detector.mean, std=detector.std)
    data = load(cfg)                                   # filtered records + video table
    train_it, val_it = train_streams(cfg, data)        # two independent shuffles (spec 5)
    batch = next(train_it)
    state = train_it.get_state()                       # JSON-able; set_state(state) resumes
    for batch in eval_iterator(dataclasses.replace(cfg, split="test"), ...): ...

Checkpointing with orbax: ``grain.checkpoint.CheckpointSave(train_it)`` /
``CheckpointRestore(train_it)`` under an ``ocp.args.Composite`` (see
``save_iterators``), or ``get_state()``/``set_state()`` directly. A restored
iterator yields exactly the batches the uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from sjedd_jax.backbones.clip import MEAN as CLIP_MEAN, STD as CLIP_STD  # the default normalisation
from sjedd_jax.data import model_input
from sjedd_jax.data import manifest
from sjedd_jax.data import perturb as perturb_lib
from sjedd_jax.data import videos

# A separate seed stream for the bi-level validation minibatches (spec section 5).
VAL_STREAM_SEED_OFFSET = 0x5EED


def binary_labels(rec) -> dict[str, np.ndarray]:
  """The default ``label_fn``: only the real/fake label, ``{"y": (1,)}``."""
  return {"y": np.asarray([float(rec.is_fake)], np.float32)}


@dataclasses.dataclass
class DataConfig:
  data_dir: str
  split: str | Sequence[str] = "train"
  sources: Sequence[str] | None = None     # keep only these sources (cross-manipulation)
  exclude_sources: Sequence[str] = ()
  image_size: int = 224
  batch_size: int = 32
  # record -> {key: array}: the detector's training targets (``Detector.label_fn``).
  label_fn: Callable[[manifest.Record], Mapping[str, np.ndarray]] = binary_labels
  mean: Sequence[float] = CLIP_MEAN        # the backbone's input normalisation (x / 255 - mean) / std
  std: Sequence[float] = CLIP_STD
  perturb_probability: float = perturb_lib.PROBABILITY   # train only; 0 turns it off
  perturb_names: Sequence[str] = perturb_lib.NAMES
  hflip: bool = False                      # train: mirror each image with probability 1/2 (not the release)
  patch_mode: str = "block"
  seed: int = 0
  num_epochs: int | None = None            # None: repeat forever
  workers: int = 0                         # grain mp_prefetch processes; 0 = in-process
  worker_buffer_size: int = 2              # batches buffered per worker process
  read_threads: int = 2                    # threads per process making batches (0: none)
  prefetch_batches: int = 4                # batches buffered per process (grain's default 500 is GBs)
  skip_unreadable: bool = False
  shard_by_process: bool = True            # each JAX process reads a disjoint slice
  balance_real: bool = False               # train: every batch half real, half fake (real faces repeated)
  eval_perturb: tuple[str, int] | None = None   # eval: apply perturb.apply(name, level) to every image
  # A detector's own per-example transform (``Detector.transform``), after reading, perturbing and
  # flipping: ``transform(image_uint8, record, data_dir, rng, train) -> {"image": uint8 (H, W, 3), ...}``;
  # the keys in ``image_keys`` are uint8 images the pipeline resizes and normalises (e.g. a second
  # view), every other key an array passed through (e.g. a forgery mask). Must be picklable.
  transform: Callable[..., Mapping[str, np.ndarray]] | None = None
  image_keys: Sequence[str] = ("image",)


@dataclasses.dataclass
class Data:
  """The filtered records and the host-side tables that batches index into."""
  data_dir: str
  records: list[manifest.Record]
  video_ids: list[str]            # video table (``batch['video']`` indexes it)
  video_of: np.ndarray            # (len(records),) int32 record -> video index

  def __len__(self) -> int:
    return len(self.records)


def load(cfg: DataConfig) -> Data:
  """Reads ``cfg.data_dir``'s manifest; keeps ``cfg.split`` and the chosen sources."""
  splits = (cfg.split,) if isinstance(cfg.split, str) else tuple(cfg.split)
  records = manifest.read(cfg.data_dir, splits)
  if cfg.sources is not None:
    records = [r for r in records if r.source in set(cfg.sources)]
  if cfg.exclude_sources:
    records = [r for r in records if r.source not in set(cfg.exclude_sources)]
  if not records:
    raise ValueError(f"{cfg.data_dir}: no records for split {splits} and sources "
                     f"{cfg.sources} (excluding {tuple(cfg.exclude_sources)})")
  table: dict[str, int] = {}
  video_of = np.asarray([table.setdefault(r.video_id, len(table)) for r in records], np.int32)
  return Data(cfg.data_dir, records, list(table), video_of)


def make_labels(data: Data, label_fn: Callable) -> dict[str, np.ndarray]:
  """Every record's targets, stacked: ``{key: (N, ...)}``. A record whose label cannot be made
  fails with its manifest position and path."""
  rows = []
  for i, rec in enumerate(data.records):
    try:
      row = {k: np.asarray(v, np.float32) for k, v in label_fn(rec).items()}
    except (ValueError, KeyError, TypeError) as e:
      raise manifest.ManifestError(f"{data.data_dir}: record {i} ({rec.path}): cannot make its label: {e}") from e
    if rows and set(row) != set(rows[0]):
      raise manifest.ManifestError(f"{data.data_dir}: record {i} ({rec.path}): label keys {sorted(row)} differ "
                                   f"from the first record's {sorted(rows[0])}")
    rows.append(row)
  return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


class LoadExample:
  """Record index -> example dict; a picklable ``(index, rng)`` function for grain.

  Index -1 is padding (zeros, ``valid`` 0). Labels are computed once, here.
  """

  def __init__(self, data: Data, cfg: DataConfig, train: bool):
    self.data_dir = data.data_dir
    self.paths = [r.path for r in data.records]
    self.video_of = data.video_of
    self.is_fake = np.asarray([r.is_fake for r in data.records], np.int32)
    self.labels = make_labels(data, cfg.label_fn)
    self.mean = tuple(float(x) for x in cfg.mean)
    self.std = tuple(float(x) for x in cfg.std)
    self.size = cfg.image_size
    self.skip_unreadable = cfg.skip_unreadable
    self.perturb = (perturb_lib.make(cfg.perturb_probability, tuple(cfg.perturb_names), cfg.patch_mode)
                    if train and cfg.perturb_probability > 0 else None)
    self.hflip = train and cfg.hflip
    self.eval_perturb = None if train or not cfg.eval_perturb else (str(cfg.eval_perturb[0]), int(cfg.eval_perturb[1]))
    if self.eval_perturb and self.eval_perturb[0] not in perturb_lib.NAMES:
      raise ValueError(f"eval_perturb {cfg.eval_perturb!r}: expected (name, level) with a name in {perturb_lib.NAMES}")
    self.seed = cfg.seed
    self.train = train
    self.transform = cfg.transform
    self.image_keys = tuple(cfg.image_keys)
    self.records = data.records if cfg.transform is not None else None
    self._pad = None
    self.skipped = 0

  def __call__(self, index: int, rng: np.random.Generator | None = None) -> dict[str, Any]:
    index = int(index)
    if index < 0:
      return self._padding()
    image, index = self._read(index)
    if self.perturb is not None:
      image = self.perturb(image, rng)
    if self.eval_perturb is not None:  # robustness evaluation: one fixed perturbation, seeded per record
      name, level = self.eval_perturb
      image = perturb_lib.apply(image, name, level, np.random.default_rng((self.seed, index)))
    if self.hflip and rng.random() < 0.5:  # label preserving: the labels name regions, not sides
      image = np.ascontiguousarray(image[:, ::-1])
    extras = {}
    if self.transform is not None:
      t_rng = rng if rng is not None else np.random.default_rng((self.seed, index))
      out = dict(self.transform(image, self.records[index], self.data_dir, t_rng, self.train))
      extras = {k: (model_input.preprocess_np(v, self.size, self.mean, self.std) if k in self.image_keys
                    else np.asarray(v)) for k, v in out.items() if k != "image"}
      image = out["image"]
    return {
        "image": model_input.preprocess_np(image, self.size, self.mean, self.std),
        **extras,
        **{k: v[index] for k, v in self.labels.items()},
        "is_fake": self.is_fake[index], "video": self.video_of[index],
        "index": np.int32(index), "valid": np.int32(1),
    }

  def _read(self, index: int) -> tuple[np.ndarray, int]:
    """Image of record ``index``; with ``skip_unreadable``, the next readable record's
    (its own label travels with it: the example is that record, never mislabelled)."""
    n = len(self.paths)
    for k in range(n):
      i = (index + k) % n
      path = f"{self.data_dir}/{self.paths[i]}"
      try:
        return videos.read_image(path), i
      except videos.VideoError as e:
        if not self.skip_unreadable:
          raise videos.VideoError(f"unreadable image (record {i} of {self.data_dir}/manifest.jsonl): {e}. Replace "
                                  "the file, or set config.data.skip_unreadable=True to skip such records (each "
                                  "skip is counted and logged); a rerun resumes from the last checkpoint") from e
        self.skipped += 1
        logging.warning("skipping unreadable image %s (record %d; %d skipped in this process)",
                        path, i, self.skipped)
    raise videos.VideoError(f"{self.data_dir}: no readable image in {n} records")

  def _padding(self) -> dict[str, Any]:
    if self._pad is None:
      extras = {}
      if self.transform is not None:  # the transform's keys and shapes, from a blank image of record 0
        out = self.transform(np.zeros((self.size, self.size, 3), np.uint8), self.records[0], self.data_dir,
                             np.random.default_rng(0), self.train)
        extras = {k: (np.zeros((self.size, self.size, 3), np.float32) if k in self.image_keys
                      else np.zeros(np.shape(v), np.asarray(v).dtype)) for k, v in out.items() if k != "image"}
      self._pad = extras
    return {
        "image": np.zeros((self.size, self.size, 3), np.float32),
        **self._pad,
        **{k: np.zeros(v.shape[1:], v.dtype) for k, v in self.labels.items()},
        "is_fake": np.int32(0), "video": np.int32(-1), "index": np.int32(-1), "valid": np.int32(0),
    }


def _shard(indices: np.ndarray, cfg: DataConfig, equal: bool) -> np.ndarray:
  if not cfg.shard_by_process:
    return indices
  import jax  # pylint: disable=g-import-not-at-top
  count, index = jax.process_count(), jax.process_index()
  if equal:  # every process the same number of examples (same number of train steps)
    indices = indices[:len(indices) // count * count]
  return indices[index::count]


def _to_iter(ds: grain.MapDataset, cfg: DataConfig) -> grain.IterDataset:
  """Threaded prefetch within a process (a bounded buffer of batches), then workers."""
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                            prefetch_buffer_size=cfg.prefetch_batches))
  if cfg.workers > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; outside an absl app
      flags.FLAGS.mark_as_parsed()   # (pytest, notebooks) they are otherwise unparsed
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.workers,
                                                     per_worker_buffer_size=cfg.worker_buffer_size))
  return ds


def _batch_fn(examples):
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def train_dataset(cfg: DataConfig, data: Data | None = None, seed: int | None = None,
                  keep_valid: bool = False) -> grain.IterDataset:
  """The training stream: shuffled per epoch, perturbed, batched with drop_remainder."""
  data = data or load(cfg)
  seed = cfg.seed if seed is None else seed
  indices = _train_indices(cfg, data)
  if len(indices) < cfg.batch_size:
    raise ValueError(f"{cfg.data_dir}: {len(indices)} training examples on this process, "
                     f"fewer than batch_size={cfg.batch_size}")
  load_fn = LoadExample(data, cfg, train=True)
  seed = seed % 2**32
  if cfg.balance_real:  # real and fake shuffled apart, then alternated: every batch half real
    real, fake = _balanced_halves(cfg, data)
    ds = grain.MapDataset.mix([grain.MapDataset.source(real.tolist()).seed(seed).shuffle(),
                               grain.MapDataset.source(fake.tolist()).seed((seed + 1) % 2**32).shuffle()])
    ds = ds.seed(seed)
  else:
    ds = grain.MapDataset.source(indices.tolist()).seed(seed).shuffle()
  ds = (ds.random_map(load_fn)
        .batch(cfg.batch_size, drop_remainder=True, batch_fn=_batch_fn))
  if not keep_valid:
    ds = ds.map(_drop_valid)
  ds = ds.repeat(cfg.num_epochs)
  return _to_iter(ds, cfg)


def _drop_valid(batch):
  batch = dict(batch)
  batch.pop("valid")
  return batch


def _balanced_halves(cfg: DataConfig, data: Data) -> tuple[np.ndarray, np.ndarray]:
  """``balance_real``: this process's real and fake record indices, of equal length.

  The smaller class is repeated (deterministically) to the size of the larger.
  """
  indices = np.arange(len(data), dtype=np.int64)
  is_fake = np.asarray([r.is_fake for r in data.records], bool)
  real, fake = indices[~is_fake], indices[is_fake]
  if not len(real) or not len(fake):
    raise ValueError(f"{cfg.data_dir}: balance_real needs real and fake training records; "
                     f"found {len(real)} real and {len(fake)} fake")
  if cfg.batch_size % 2:
    raise ValueError(f"balance_real makes every batch half real, half fake: the per-process "
                     f"batch size {cfg.batch_size} must be even")
  n = max(len(real), len(fake))
  real, fake = (np.tile(x, -(-n // len(x)))[:n] for x in (real, fake))
  return _shard(real, cfg, equal=True), _shard(fake, cfg, equal=True)


def _train_indices(cfg: DataConfig, data: Data) -> np.ndarray:
  """This process's record indices for one training epoch.

  With ``balance_real`` the smaller class (usually the real faces) is repeated
  so an epoch holds as many real as fake examples, and each batch is half real.
  """
  if cfg.balance_real:
    return np.sort(np.concatenate(_balanced_halves(cfg, data)))
  return _shard(np.arange(len(data), dtype=np.int64), cfg, equal=True)


def steps_per_epoch(cfg: DataConfig, data: Data) -> int:
  """Train batches per epoch on each process."""
  return len(_train_indices(cfg, data)) // cfg.batch_size


def train_streams(cfg: DataConfig, data: Data | None = None) -> tuple[grain.DatasetIterator, grain.DatasetIterator]:
  """``(train_iter, val_iter)``: two independently shuffled streams over the training set.

  The second supplies the validation minibatches V of the bi-level step (spec section
  5); same perturbation/preprocessing, seed ``cfg.seed + VAL_STREAM_SEED_OFFSET``.
  """
  data = data or load(cfg)
  train = iter(train_dataset(cfg, data, cfg.seed))
  val = iter(train_dataset(cfg, data, cfg.seed + VAL_STREAM_SEED_OFFSET))
  return train, val


def eval_dataset(cfg: DataConfig, data: Data | None = None) -> grain.IterDataset:
  """In-order, unperturbed batches; the last one padded (``valid`` 0, ``index`` -1).

  Every process gets the same number of batches (shards padded to equal length).
  """
  data = data or load(cfg)
  n = len(data)
  indices = _shard(np.arange(n, dtype=np.int64), cfg, equal=False)
  count = _process_count() if cfg.shard_by_process else 1
  per_process = math.ceil(n / count)
  num_batches = max(1, math.ceil(per_process / cfg.batch_size))
  padded = np.full(num_batches * cfg.batch_size, -1, np.int64)
  padded[:len(indices)] = indices
  load_fn = LoadExample(data, cfg, train=False)
  ds = (grain.MapDataset.source(padded.tolist())
        .map(load_fn)
        .batch(cfg.batch_size, drop_remainder=False, batch_fn=_batch_fn))
  return _to_iter(ds, cfg)


def eval_iterator(cfg: DataConfig, data: Data | None = None) -> grain.DatasetIterator:
  return iter(eval_dataset(cfg, data))


def _process_count() -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count()


# ----------------------------------------------------------------------------- checkpoints

def save_iterators(directory: str, iterators: dict[str, grain.DatasetIterator]) -> None:
  """Saves iterator states with orbax (one grain ``CheckpointSave`` item per name).

  In a training checkpoint, add the same items to the ``ocp.args.Composite`` that
  saves the model: ``ocp.args.Composite(state=..., train_it=grain.checkpoint.CheckpointSave(it))``.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.save(directory, ocp.args.Composite(**{
        k: grain.checkpoint.CheckpointSave(it) for k, it in iterators.items()}), force=True)


def restore_iterators(directory: str, iterators: dict[str, grain.DatasetIterator]) -> None:
  """Restores states saved by ``save_iterators`` into freshly built iterators (in place)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
    ckptr.restore(directory, ocp.args.Composite(**{
        k: grain.checkpoint.CheckpointRestore(it) for k, it in iterators.items()}))
