"""JEDD (the draft detector): label graph and table as data, prompt ids, probabilities, the model."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from sjedd_jax.detectors.sjedd import hierarchy as hierarchy_lib
from sjedd_jax.detectors.sjedd import templates as templates_lib
from sjedd_jax.detectors.jedd import model as jedd


def test_spec_word_ids_reproduce_the_spec_templates():
  assert [tuple(r) for r in jedd.spec_ids(templates_lib.RELEASE_TEMPLATES)] == list(templates_lib.RELEASE_IDS)
  assert [tuple(r) for r in jedd.spec_ids(templates_lib.KEYWORD_TEMPLATES)] == list(templates_lib.KEYWORD_IDS)
  ids = jedd.token_ids(["a photo of a fake face"], "spec")
  assert ids[0, :8].tolist() == list(templates_lib.RELEASE_IDS[0])


def test_draft_prompts_need_a_tokenizer_and_say_so():
  pos, neg = jedd.pair_templates(jedd.graph())
  assert pos[3] == "a photo of a face with the global attribute of physical consistency altered"
  assert neg[0] == "a photo of a real face" and neg[7].endswith("nose unaltered")
  for source in ("auto", "spec"):
    with pytest.raises(templates_lib.TemplateError, match=r"(?s)'illumination'.*'real'.*'unaltered'.*placeholder"):
      jedd.token_ids(pos + neg, source)
  with pytest.raises(templates_lib.TemplateError, match="no CLIP tokenizer"):
    jedd.token_ids(pos, "tokenizer")
  # With a tokenizer its ids are used as they are (a stand-in callable here).
  tok = lambda texts: templates_lib.pad([[templates_lib.SOT, 7 + i, templates_lib.EOT] for i in range(len(texts))])
  ids = jedd.token_ids(pos, "auto", tok)
  assert ids[:, 1].tolist() == list(range(7, 15))


def test_placeholder_ids_are_deterministic_distinct_and_documented_as_such():
  h = jedd.graph(probability="joint")
  texts = jedd.joint_templates(h) + sum(jedd.pair_templates(jedd.graph()), ())
  a, b = jedd.token_ids(texts, "placeholder"), jedd.token_ids(texts, "placeholder")
  np.testing.assert_array_equal(a, b)
  words = sorted({w for t in texts for w in t.split()})
  ids = {jedd.placeholder_word_id(w) for w in words}
  assert len(ids) == len(words) and max(ids) < templates_lib.SOT and min(ids) >= 1
  assert (a[:, 0] == templates_lib.SOT).all() and (a.max(1) == templates_lib.EOT).all()
  # "fake" is not given CLIP's id 5777: placeholder ids are never passed off as real ones.
  assert jedd.placeholder_word_id("fake") != templates_lib.WORD_IDS["fake"][0]


def test_draft_graph_and_label_table_are_data():
  h = jedd.graph("jedd_draft")
  assert h.nodes == ("fake", "expression", "identity", "physical_consistency", "eye", "illumination", "mouth", "nose")
  assert h.levels == (0, 1, 1, 1, 2, 2, 2, 2) and h.probability == "sigmoid"
  table = jedd.label_table("jedd_draft", h.nodes)
  states = h.legal_states
  for src, row in table.items():
    row = np.asarray(row)
    obs = row >= 0
    assert ((states[:, obs] == row[obs]).all(1)).any(), f"{src} label is not a legal state"
  assert table["NeuralTextures"] == (1, 1, 0, 1, 0, 0, 1, 0)
  assert table["aug_eye"][1] == -1          # expression unobserved, as in Table I
  # Fewer levels keep a consistent sub-graph and the matching label columns.
  h1, h2 = jedd.graph(levels=1), jedd.graph(levels=2)
  assert h1.nodes == ("fake",) and h1.num_states == 2
  assert h2.nodes == h.nodes[:4] and jedd.label_table("jedd_draft", h2.nodes)["Face2Face"] == (1, 1, 0, 1)
  # A graph and a table from JSON-like dicts.
  g = jedd.graph({"nodes": ["f", "a"], "levels": [0, 1], "edges": [["f", "a"]]})
  assert g.num_states == 3
  assert jedd.label_table({"real": {"f": 0, "a": None}}, g.nodes) == {"real": (0, -1)}
  with pytest.raises(jedd.JEDDError, match="no value for node"):
    jedd.label_table({"real": {"f": 0}}, g.nodes)


def test_probabilities():
  rng = np.random.default_rng(0)
  f = jnp.asarray(rng.normal(size=(5, 8)), jnp.float32)
  np.testing.assert_allclose(jedd.graph().marginals(f), jax.nn.sigmoid(f), rtol=1e-6)
  hh = jedd.graph(probability="hierarchy")
  base = hierarchy_lib.LabelHierarchy.from_dict(jedd.DRAFT_GRAPH)
  np.testing.assert_allclose(hh.marginals(f), base.marginals(f), rtol=1e-6)
  hj = jedd.graph(probability="joint")
  z = jnp.asarray(rng.normal(size=(5, hj.num_states)), jnp.float32)
  want = jax.nn.softmax(z) @ hj.legal_states
  np.testing.assert_allclose(hj.marginals(z), want, rtol=1e-5)
  assert hj.num_scores == hj.num_states == 86 and hh.num_scores == 8
  # With every state legal, independent sigmoids and the joint's marginals agree.
  free = jedd.JEDDHierarchy(["r"], [0], [], probability="hierarchy")
  x = jnp.asarray([[0.3], [-2.0]])
  np.testing.assert_allclose(free.marginals(x), jax.nn.sigmoid(x), rtol=1e-6)
  with pytest.raises(jedd.JEDDError, match="no joint"):
    jedd.graph().log_joint(f)


@pytest.fixture(scope="module")
def clip():
  from sjedd_jax.backbones.clip import modeling as clip_lib
  return clip_lib.CLIP(clip_lib.get_config("test"), rngs=nnx.Rngs(0))


def test_scores_are_cosine_differences_of_prompt_pairs(clip):
  images = jnp.asarray(np.random.default_rng(1).normal(size=(3, 32, 32, 3)), jnp.float32)
  m = jedd.JEDD(clip, jedd.graph(), token_ids_source="placeholder", tau=0.5)
  assert len(m.texts) == 16 and m.text_context == templates_lib.longest(np.asarray(m.template_ids))
  u = clip.encode_image(images)
  v = clip.encode_text(m.token_ids())
  cos = (u / jnp.linalg.norm(u, axis=-1, keepdims=True)) @ (v / jnp.linalg.norm(v, axis=-1, keepdims=True)).T / 0.5
  s = m.scores(images)
  np.testing.assert_allclose(s, cos[:, :8] - cos[:, 8:], atol=1e-5)
  np.testing.assert_allclose(m.marginals(images), jax.nn.sigmoid(s), atol=1e-6)
  # Without contrastive pairs: sigmoid(s); joint templates: one logit per legal state.
  m1 = jedd.JEDD(clip, jedd.graph(), token_ids_source="placeholder", contrastive=False)
  assert len(m1.texts) == 8 and m1.scores(images).shape == (3, 8)
  mj = jedd.JEDD(clip, jedd.graph(probability="joint"), token_ids_source="placeholder")
  assert mj.scores(images).shape == (3, 86) and not mj.contrastive
  p = mj.marginals(images)
  assert p.shape == (3, 8) and bool(((p >= 0) & (p <= 1)).all())


def test_frozen_text_tower_is_left_out_of_the_trainable_params(clip):
  from sjedd_jax.detectors.sjedd import model as sjedd
  m = jedd.JEDD(clip, jedd.graph(levels=1), token_ids_source="placeholder", freeze_text=True)
  _, params, rest = sjedd.split(m)
  paths = ["/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(params))[0]]
  assert paths and not any("text" in p for p in paths)
  assert any("text" in "/".join(map(str, p)) for p, _ in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(rest))[0])


def test_placeholder_ids_refused_with_pretrained_weights(tmp_path):
  from configs import jedd_draft
  from sjedd_jax import config as config_lib, detectors
  c = jedd_draft.get_config("synthetic")
  c.model.pretrained = str(tmp_path)     # any existing path: refused before loading
  with pytest.raises(config_lib.ConfigError, match="placeholder"):
    detectors.make(c)
  c = jedd_draft.get_config()              # FF++ recipe, no tokenizer: a clear error
  c.model.clip = "test"
  with pytest.raises(config_lib.ConfigError, match="need CLIP's tokenizer"):
    detectors.make(c).init(c.seed)
