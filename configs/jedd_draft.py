r"""JEDD, the earlier joint-embedding detector (NeurIPS draft), on expanded FF++.

    python -m sjedd_jax.train --config configs/jedd_draft.py --workdir /ckpt/jedd \
        --config.data.dir=/data/ffpp_expanded --config.model.pretrained=/weights/clip-vit-base-patch32

Its synthetic twin (random-init tiny CLIP, CPU, placeholder token ids):

    python -m sjedd_jax.train --config configs/jedd_draft.py:synthetic --workdir /tmp/jedd_synth

The draft's recipe (Secs. 3.2-3.3, 4.1): binary / global / local levels with
contrastive prompt pairs ("... altered" / "... unaltered"), cosine similarity,
P = sigmoid(s - sbar) per node (Eq. 1-2, no temperature: cosine_tau 1), the
fidelity loss per level, dynamic weight average per iteration (Eq. 7, tau 2),
CLIP ViT-B/32, AdamW lr 1e-7 with weight decay 1e-3 and a cosine schedule,
36 epochs, batch 32, perturbations with probability 0.3. The draft's labels of
the expanded FF++ sources are ``sjedd_jax.detectors.jedd.model.DRAFT_LABELS`` and its
label graph ``DRAFT_GRAPH`` (both data).

The prompts use words outside the spec's id list ("real", "unaltered",
"illumination", "consistency"), so with pretrained weights the CLIP tokenizer
must be available (an HF checkpoint directory with tokenizer files, or
``--config.model.jedd.tokenizer=DIR``). The twin uses placeholder ids (not
CLIP's; any distinct ids work for a randomly initialised text tower).
"""

import os

import ml_collections

from sjedd_jax import config as config_lib


def get_config(arg=None):
  synthetic = arg == "synthetic"
  if arg not in (None, "", "synthetic"):
    raise ValueError(f"configs/jedd_draft.py: unknown argument {arg!r}; use none or 'synthetic'")
  here = os.path.dirname(os.path.abspath(__file__))
  c = config_lib.load_config_file(os.path.join(here, "synthetic.py" if synthetic else "ffpp.py"))
  c.detector = "jedd"
  c.hierarchy = "jedd_draft"             # sjedd_jax.detectors.jedd.model.DRAFT_GRAPH (or a JSON file)
  c.data.label_table = "jedd_draft"      # sjedd_jax.detectors.jedd.model.DRAFT_LABELS (or a JSON file)
  c.model.similarity = "cosine"
  c.model.cosine_tau = 1.0               # Eq. 2 has no temperature
  c.model.jedd = ml_collections.ConfigDict(dict(
      levels=3,                          # 1: binary templates only (5), 2: two levels (6)
      probability="sigmoid",             # "sigmoid" (Eq. 1), "hierarchy" (11), "joint" (joint templates, 7)
      contrastive=True,                  # False: no "unaltered" prompts (4)
      token_ids="placeholder" if synthetic else "auto",   # see sjedd_jax/detectors/jedd/model.py
      tokenizer="",                      # an HF CLIP directory with tokenizer files
  ))
  c.loss = "fidelity"
  c.weighting.kind = "dwa"               # Eq. 7
  c.weighting.dwa_temperature = 2.0
  c.weighting.dwa_period = 1             # w_i(t-1) = l_i(t-1) / l_i(t-2): per iteration
  if not synthetic:
    c.optim.lr = 1e-7
    c.optim.weight_decay = 1e-3
    c.optim.schedule = "cosine"
    c.num_epochs = 36
    c.batch_size = 32
  return c
