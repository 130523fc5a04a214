"""Optional: a TFDS builder turning a manifest directory into ArrayRecord files.

The primary path is manifest + image files read by ``pipeline``; this packs a
prepared dataset directory into TFDS ArrayRecord shards (one file per split,
random access, no TensorFlow needed: images are passed as file paths).

    builder = build("/data/ffpp_c23", tfds_dir="/data/tfds")       # reads manual_dir
    source = builder.as_data_source(split="train")                  # random access
    ex = source[0]   # {"image": uint8 (H, W, 3), "is_fake", "source", "video_id", "index", ...}
    ds = grain.MapDataset.source(source)

Example order in the shards is TFDS's (hashed keys); ``index`` is the record's
position in ``manifest.jsonl``. The shards hold the records, not training
targets: a detector's ``label_fn`` makes those from the record (``index``).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from sjedd_jax.data import faces
from sjedd_jax.data import manifest


class ManifestConfig(tfds.core.BuilderConfig):
  def __init__(self, *, image_format: str = "png", **kwargs):
    super().__init__(**kwargs)
    self.image_format = image_format


class SjeddManifest(tfds.core.GeneratorBasedBuilder):
  """Any ``sjedd_jax.data.manifest`` directory, given as ``manual_dir``."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [ManifestConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir: a dataset directory holding manifest.jsonl and its images."

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Face crops and their records, from a manifest directory.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=self.builder_config.image_format),
            "is_fake": np.int32,
            "source": tfds.features.Text(),
            "video_id": tfds.features.Text(),
            "identity": tfds.features.Text(),
            "frame": np.int32,
            "index": np.int32,
            "landmarks": tfds.features.Tensor(shape=(faces.NUM_LANDMARKS, 2), dtype=np.float32),
            "has_landmarks": np.bool_,
        }),
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    records = manifest.read(root)
    splits = sorted({r.split for r in records})
    return {s: self._generate_examples(root, records, s) for s in splits}

  def _generate_examples(self, root, records, split):
    for i, r in enumerate(records):
      if r.split != split:
        continue
      lm = np.zeros((faces.NUM_LANDMARKS, 2), np.float32) if r.landmarks is None else np.asarray(r.landmarks, np.float32)
      yield i, {
          "image": os.path.join(root, r.path), "is_fake": r.is_fake,
          "source": r.source, "video_id": r.video_id, "identity": r.identity, "frame": r.frame,
          "index": i, "landmarks": lm, "has_landmarks": r.landmarks is not None,
      }


def build(manifest_dir: str, tfds_dir: str) -> SjeddManifest:
  """Packs ``manifest_dir`` into ArrayRecord shards under ``tfds_dir``; returns the builder."""
  records = manifest.read(manifest_dir)
  exts = {os.path.splitext(r.path)[1].lower() for r in records}
  image_format = "png" if exts <= {".png"} else "jpeg"
  config = ManifestConfig(name=image_format, image_format=image_format)
  builder = SjeddManifest(data_dir=tfds_dir, config=config, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manifest_dir))
  return builder
