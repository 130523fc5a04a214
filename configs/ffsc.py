"""SJEDD on a dataset with its own label graph (e.g. FFSC: root + 5 global attributes + 6 local regions).

    python -m sjedd_jax.train --config configs/ffsc.py --workdir /ckpt/sjedd_ffsc \
        --config.data.dir=/data/ffsc --config.hierarchy=/data/ffsc/graph.json \
        --config.model.pretrained=/weights/clip-vit-base-patch32

The graph is data: a JSON file ``{"nodes": [...], "levels": {...}, "edges": {...}}``
(see ``sjedd_jax.detectors.sjedd.hierarchy.LabelHierarchy.from_json``). The manifest in
``data.dir`` carries explicit ``y``/``observed`` vectors over those nodes (N/A = observed 0),
and templates must be given as strings (one per node, in node order; they are
tokenised with the tokenizer stored beside the pretrained CLIP).
"""

from sjedd_jax import config as config_lib


def get_config():
  c = config_lib.base_config("sjedd")
  c.data.kind = "manifest"
  c.data.dir = ""
  c.hierarchy = ""                # path to the graph JSON (required)
  c.model.clip = "ViT-B/32"
  c.model.pretrained = ""
  c.model.require_pretrained = True
  # One template per node, e.g. "A photo of a face with the global attribute of age altered".
  c.model.templates = ""          # a JSON list of strings, or a path to a JSON file with that list
  c.optim.lr = 6e-7
  c.optim.schedule = "release_cosine"
  c.batch_size = 32
  c.num_epochs = 20
  c.eval_every = 0
  return c
