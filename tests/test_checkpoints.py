"""load_pretrained on every checkpoint kind, the converter, tokenizers and clear errors."""

import os
import sys
import zipfile

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from sjedd_jax.backbones.clip import checkpoints
from sjedd_jax.detectors.sjedd import templates
from sjedd_jax.backbones.clip import modeling as clip_lib
from sjedd_jax.backbones.clip import params as params_lib
from sjedd_jax.detectors.sjedd import model as sjedd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)), "scripts"))
import convert_checkpoint  # pylint: disable=g-import-not-at-top,wrong-import-position

# Heads by OpenAI's rule (width // 64, at least 1) so OpenAI-format dicts need no override.
CFG = clip_lib.get_config("test", vision_heads=1, text_heads=1)
encode_image = nnx.jit(lambda m, x: m.encode_image(x))
encode_text = nnx.jit(lambda m, ids: m.encode_text(ids))


@pytest.fixture(scope="module")
def source():
  """A random CLIP, its OpenAI state dict (torch tensors), and reference outputs."""
  model = nnx.eval_shape(lambda: clip_lib.CLIP(CFG, rngs=nnx.Rngs(0)))
  rng = np.random.default_rng(0)
  flat = {k: (1.0 if k.endswith("scale") else 0.0) + 0.1 * rng.standard_normal(s).astype(np.float32)
          for k, s in params_lib.flatten_shapes(model).items()}
  params_lib.assign(model, flat)
  sd = {k: torch.from_numpy(v.copy()) for k, v in params_lib.nnx_to_openai(flat, CFG).items()}
  sd["logit_scale"] = torch.tensor(4.6052)
  x = jnp.asarray(rng.standard_normal((2, 32, 32, 3)).astype(np.float32))
  ids = jnp.asarray(templates.template_ids("release"))
  return model, sd, x, ids, np.asarray(encode_image(model, x)), np.asarray(encode_text(model, ids))


def _same(model, source):
  _, _, x, ids, u, v = source
  np.testing.assert_allclose(np.asarray(encode_image(model, x)), u, atol=1e-6)
  np.testing.assert_allclose(np.asarray(encode_text(model, ids)), v, atol=1e-6)


@pytest.mark.parametrize("prefix", ["", "module.", "clip_model.", "module.model."])
def test_release_format_with_prefixes(source, tmp_path, prefix):
  sd = {prefix + k: v for k, v in source[1].items()}
  path = tmp_path / "ckpt_epoch_0.pth"
  torch.save({"model": sd, "optimizer": {"state": {}, "param_groups": [{"lr": 6e-7}]},
              "epoch": 0, "max_accuracy": 0.0}, path)
  model, tok = checkpoints.load_pretrained(path)
  assert tok is None and model.config == CFG
  _same(model, source)


def test_convert_script_then_load_without_torch(source, tmp_path, monkeypatch, capsys):
  src = tmp_path / "openai.pt"
  torch.save(source[1], src)
  out = tmp_path / "converted"
  assert convert_checkpoint.main([str(src), str(out), "--orbax"]) == 0
  assert "wrote" in capsys.readouterr().out
  assert sorted(os.listdir(out)) == ["orbax", "params.safetensors", "sjedd_clip.json"]
  monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now fails
  model, _ = checkpoints.load_pretrained(out)
  _same(model, source)
  os.remove(out / "params.safetensors")  # the orbax copy alone
  model, _ = checkpoints.load_pretrained(out)
  _same(model, source)
  with pytest.raises(ImportError, match=r"pip install torch==2\.13\.0"):
    checkpoints.load_pretrained(src)


def test_convert_script_reports_errors(tmp_path, capsys):
  bad = tmp_path / "bad.pth"
  bad.write_bytes(b"\x00not a checkpoint" * 20)
  assert convert_checkpoint.main([str(bad), str(tmp_path / "out")]) == 1
  assert str(bad) in capsys.readouterr().err


def test_release_converted_dir_gives_release_model(source, tmp_path):
  src = tmp_path / "ckpt.pth"
  torch.save({"model": source[1]}, src)
  out = tmp_path / "release_converted"
  assert convert_checkpoint.main([str(src), str(out)]) == 0
  a, b = sjedd.from_release_checkpoint(src), sjedd.from_release_checkpoint(out)
  assert a.clip.config == b.clip.config == CFG
  assert (a.tau, a.template_ids, a.hierarchy.num_states) == (b.tau, b.template_ids, 251)
  fa, fb = params_lib.flatten(a.clip), params_lib.flatten(b.clip)
  assert fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)
  _same(b.clip, source)


def test_openai_safetensors_and_hf_state_dict_file(source, tmp_path):
  from safetensors.torch import save_file
  save_file({k: v.contiguous() for k, v in source[1].items()}, str(tmp_path / "oa.safetensors"))
  _same(checkpoints.load_pretrained(tmp_path / "oa.safetensors").model, source)
  hf_sd = params_lib.openai_to_hf({k: v.numpy() for k, v in source[1].items()})
  save_file({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in hf_sd.items()},
            str(tmp_path / "hf.safetensors"))
  _same(checkpoints.load_pretrained(tmp_path / "hf.safetensors").model, source)


def _toy_tokenizer():
  """A CLIP BPE tokenizer over a toy vocabulary (the real vocab files are not available offline)."""
  words = "a photo of real face with the altered smile eye".split()
  vocab = {}
  for i in range(33, 127):
    vocab[chr(i)] = len(vocab)
    vocab[chr(i) + "</w>"] = len(vocab)
  merges = []
  for w in words:
    toks = list(w[:-1]) + [w[-1] + "</w>"]
    cur = toks[0]
    for t in toks[1:]:
      merges.append((cur, t))
      cur += t
      vocab.setdefault(cur, len(vocab))
  vocab["<|startoftext|>"], vocab["<|endoftext|>"] = 49406, 49407
  return transformers.CLIPTokenizer(vocab=vocab, merges=list(dict.fromkeys(merges)))


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
  hf_cfg = transformers.CLIPConfig(
      text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                       hidden_act="quick_gelu", eos_token_id=49407),
      vision_config=dict(image_size=32, patch_size=16, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, hidden_act="quick_gelu"),
      projection_dim=16)
  torch.manual_seed(0)
  path = tmp_path_factory.mktemp("hf_with_tokenizer")
  transformers.CLIPModel(hf_cfg).save_pretrained(path)
  _toy_tokenizer().save_pretrained(path)
  return path


def test_hf_dir_with_tokenizer(hf_dir, tmp_path):
  model, tok = checkpoints.load_pretrained(hf_dir)
  assert isinstance(tok, templates.ClipTokenizer)
  texts = ["A photo of a real face", "a face with the smile altered"]
  ids = tok(texts)
  assert ids.shape == (2, 77) and ids.dtype == np.int32
  raw = tok.hf(texts)["input_ids"]
  for row, r in zip(ids, raw):
    assert list(row[:len(r)]) == r and not row[len(r):].any()  # OpenAI's 0-padding
    assert r[0] == templates.SOT and r[-1] == templates.EOT
  # Custom templates work with a tokenizer (and the converted dir keeps it).
  out = checkpoints.save_pretrained(model, tmp_path / "conv", tokenizer=tok)
  model2, tok2 = checkpoints.load_pretrained(out)
  assert tok2 is not None and (tok2(texts) == ids).all()
  custom = tuple(f"a photo of a face with the {w} altered" for w in ["eye"] * 10)
  m = sjedd.from_pretrained(out, templates=custom)
  assert m.text_context == int(np.argmax(tok(custom[:1])[0])) + 1
  assert nnx.jit(lambda m, x: m.scores(x))(m, jnp.zeros((1, 32, 32, 3))).shape == (1, 10)


def test_corrupt_and_truncated_files_name_the_file(source, tmp_path):
  good = tmp_path / "good.pth"
  torch.save({"model": source[1]}, good)
  truncated = tmp_path / "truncated.pth"
  truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
  garbage = tmp_path / "garbage.pt"
  garbage.write_bytes(os.urandom(4096))
  bad_st = tmp_path / "bad.safetensors"
  bad_st.write_bytes(b"{}" * 50)
  for path in (truncated, garbage, bad_st):
    with pytest.raises(checkpoints.CheckpointError, match=str(path.name)):
      checkpoints.load_pretrained(path)
  with pytest.raises(FileNotFoundError):
    checkpoints.load_pretrained(tmp_path / "missing.pth")
  (tmp_path / "weights.npz").write_bytes(b"x")
  with pytest.raises(checkpoints.CheckpointError, match="unknown checkpoint file type"):
    checkpoints.load_pretrained(tmp_path / "weights.npz")
  os.makedirs(tmp_path / "emptydir")
  with pytest.raises(checkpoints.CheckpointError, match="config.json"):
    checkpoints.load_pretrained(tmp_path / "emptydir")


class _Evil:
  def __reduce__(self):
    return (os.system, ("echo pwned",))


def test_unsafe_pickle_is_refused(source, tmp_path):
  path = tmp_path / "evil.pth"
  torch.save({"model": source[1], "payload": _Evil()}, path)
  with pytest.raises(checkpoints.CheckpointError, match="weights_only"):
    checkpoints.load_pretrained(path)


def test_mismatched_keys_are_listed(source, tmp_path):
  sd = dict(source[1])
  del sd["visual.ln_pre.bias"]
  del sd["transformer.resblocks.1.mlp.c_fc.weight"]
  sd["visual.extra_head.weight"] = torch.zeros(3)
  path = tmp_path / "mismatch.pth"
  torch.save(sd, path)
  with pytest.raises(checkpoints.CheckpointError) as e:
    checkpoints.load_pretrained(path)
  msg = str(e.value)
  assert "mismatch.pth" in msg and "visual.ln_pre.bias" in msg and "visual.extra_head.weight" in msg
  assert "transformer.resblocks.1.mlp.c_fc.weight" in msg
  with pytest.raises(checkpoints.CheckpointError, match="not a CLIP state dict"):
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "other.pth")
    checkpoints.load_pretrained(tmp_path / "other.pth")


def test_own_format_shape_mismatch_is_listed(source, tmp_path):
  out = checkpoints.save_pretrained(source[0], tmp_path / "own")
  from safetensors.numpy import load_file, save_file
  flat = load_file(os.path.join(out, checkpoints.OWN_PARAMS))
  flat["vision.proj"] = flat["vision.proj"][:, :5]
  save_file(flat, os.path.join(out, checkpoints.OWN_PARAMS))
  with pytest.raises(checkpoints.CheckpointError, match=r"vision\.proj: checkpoint \(64, 5\)"):
    checkpoints.load_pretrained(out)


def test_torchscript_archive_is_read(source, tmp_path):
  """OpenAI's original .pt files are TorchScript archives; their state_dict is read."""

  class Node(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
      return x

  root = Node()
  for key, value in source[1].items():
    *parents, leaf = key.split(".")
    node = root
    for name in parents:
      if not hasattr(node, name):
        node.add_module(name, Node())
      node = getattr(node, name)
    node.register_parameter(leaf, torch.nn.Parameter(value.clone()))
  path = tmp_path / "ViT-test.pt"
  torch.jit.script(root).save(str(path))
  with zipfile.ZipFile(path) as z:
    assert any(n.endswith("constants.pkl") for n in z.namelist())
  _same(checkpoints.load_pretrained(path).model, source)
