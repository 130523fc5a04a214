"""Converts a CLIP / SJEDD checkpoint to the project's own format (no torch needed to load it).

Input: anything ``sjedd_jax.backbones.clip.checkpoints.load_pretrained`` reads: a Hugging Face CLIP
directory, an OpenAI-format state dict (.safetensors, .pt/.pth, TorchScript), or
the SJEDD release's ``ckpt_epoch_*.pth``. Output: a directory with
``sjedd_clip.json`` (config) and ``params.safetensors`` (NNX parameter paths),
tokenizer files when the input had them, and optionally an orbax checkpoint.

Usage::

  python scripts/convert_checkpoint.py ckpt_epoch_19.pth converted/sjedd_release
  python scripts/convert_checkpoint.py clip-vit-base-patch32/ converted/clip_b32 --orbax
  python scripts/convert_checkpoint.py openai.pt out/ --vision-heads 12 --text-heads 8

Then, on a machine without torch::

  model, tok = sjedd_jax.backbones.clip.checkpoints.load_pretrained("converted/clip_b32")
  sjedd = sjedd_jax.detectors.sjedd.model.from_release_checkpoint("converted/sjedd_release")
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from sjedd_jax.backbones.clip import checkpoints  # pylint: disable=g-import-not-at-top,wrong-import-position


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("src", help="checkpoint file or directory")
  parser.add_argument("out_dir", help="output directory (created)")
  parser.add_argument("--orbax", action="store_true", help="also write an orbax checkpoint")
  parser.add_argument("--vision-heads", type=int, default=None,
                      help="heads of an OpenAI-format image tower (default width // 64)")
  parser.add_argument("--text-heads", type=int, default=None,
                      help="heads of an OpenAI-format text tower (default width // 64)")
  args = parser.parse_args(argv)
  try:
    model, tokenizer = checkpoints.load_pretrained(args.src, vision_heads=args.vision_heads,
                                                   text_heads=args.text_heads)
  except (checkpoints.CheckpointError, FileNotFoundError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  checkpoints.save_pretrained(model, args.out_dir, tokenizer=tokenizer, orbax=args.orbax,
                              source=os.path.abspath(args.src))
  c = model.config
  print(f"wrote {args.out_dir}: image {c.image_size}px/{c.patch_size} width {c.vision_width} x "
        f"{c.vision_layers} layers; text width {c.text_width} x {c.text_layers} layers; "
        f"embed {c.embed_dim}; tokenizer {'yes' if tokenizer else 'no'}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
