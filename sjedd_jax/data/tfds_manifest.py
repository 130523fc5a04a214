"""Optional: a TFDS builder turning a manifest directory into ArrayRecord files.

The primary path is manifest + image files read by ``pipeline``; this packs a
prepared dataset directory into TFDS ArrayRecord shards (one file per split,
random access, no TensorFlow needed: images are passed as file paths).

    builder = build("/data/ffpp_c23", tfds_dir="/data/tfds")       # reads manual_dir
    source = builder.as_data_source(split="train")                  # random access
    ex = source[0]   # {"image": uint8 (H, W, 3), "y", "mask", "is_fake", "video_id", "index", ...}
    ds = grain.MapDataset.source(source)

Example order in the shards is TFDS's (hashed keys); ``index`` is the record's
position in ``manifest.jsonl``. ``y``/``mask`` are ``manifest.label_of`` with N/A
masked (the release's ``unobserved_as_zero`` is ``y * mask`` with an all-ones mask).
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow_datasets as tfds

from sjedd_jax.data import faces
from sjedd_jax.data import manifest


class ManifestConfig(tfds.core.BuilderConfig):
  def __init__(self, *, num_nodes: int = 10, image_format: str = "png", **kwargs):
    super().__init__(**kwargs)
    self.num_nodes = num_nodes
    self.image_format = image_format


class SjeddManifest(tfds.core.GeneratorBasedBuilder):
  """Any ``sjedd_jax.data.manifest`` directory, given as ``manual_dir``."""

  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [ManifestConfig(name="default")]
  MANUAL_DOWNLOAD_INSTRUCTIONS = "manual_dir: a dataset directory holding manifest.jsonl and its images."

  def _info(self) -> tfds.core.DatasetInfo:
    n = self.builder_config.num_nodes
    return tfds.core.DatasetInfo(
        builder=self,
        description="Face crops with SJEDD labels, from a manifest directory.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3), encoding_format=self.builder_config.image_format),
            "y": tfds.features.Tensor(shape=(n,), dtype=np.float32),
            "mask": tfds.features.Tensor(shape=(n,), dtype=np.float32),
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
    n = self.builder_config.num_nodes
    for i, r in enumerate(records):
      if r.split != split:
        continue
      y, mask = manifest.label_of(r, n)
      lm = np.zeros((faces.NUM_LANDMARKS, 2), np.float32) if r.landmarks is None else np.asarray(r.landmarks, np.float32)
      yield i, {
          "image": os.path.join(root, r.path), "y": y, "mask": mask, "is_fake": r.is_fake,
          "source": r.source, "video_id": r.video_id, "identity": r.identity, "frame": r.frame,
          "index": i, "landmarks": lm, "has_landmarks": r.landmarks is not None,
      }


def build(manifest_dir: str, tfds_dir: str, num_nodes: int = 10) -> SjeddManifest:
  """Packs ``manifest_dir`` into ArrayRecord shards under ``tfds_dir``; returns the builder."""
  records = manifest.read(manifest_dir)
  exts = {os.path.splitext(r.path)[1].lower() for r in records}
  image_format = "png" if exts <= {".png"} else "jpeg"
  config = ManifestConfig(name=f"n{num_nodes}_{image_format}", num_nodes=num_nodes, image_format=image_format)
  builder = SjeddManifest(data_dir=tfds_dir, config=config, file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manifest_dir))
  return builder
