"""Textual explanations for the Table I patterns and a non-FF++ graph."""

import numpy as np
import pytest

from sjedd_jax.detectors.sjedd import explain as ex
from sjedd_jax.detectors.sjedd import hierarchy
from sjedd_jax.detectors.sjedd import labels

H = hierarchy.ffpp()


def _soft(source):
  """Confident marginals for a Table I source (N/A entries as 'not altered')."""
  y, _ = labels.ffpp_label(source)
  return 0.03 + 0.94 * y


def test_paper_sentence_from_joint_marginals():
  # Scores favouring the Face2Face-like expression state, through Eq. 3 marginals.
  scores = np.full(10, -4.0, np.float32)
  scores[[0, 1, 6, 7]] = [4.0, 4.0, 3.0, 3.0]
  m = np.asarray(H.marginals(scores))
  assert ex.explain(m, H) == (
      "The face image is fake because the global face attribute of expression is altered, "
      "through manipulation of the local lip and mouth regions.")


def test_table_i_patterns():
  assert ex.explain(_soft("real"), H) == "The face image is real."
  assert ex.explain(_soft("Deepfakes"), H) == (
      "The face image is fake because the global face attributes of identity and physical "
      "inconsistency are altered, through manipulation of the local eye, eyebrow, lip, mouth, "
      "nose and skin regions.")
  assert ex.explain(_soft("Face2Face"), H) == (
      "The face image is fake because the global face attributes of expression and physical "
      "inconsistency are altered, through manipulation of the local lip and mouth regions.")
  assert ex.explain(_soft("aug_nose"), H) == (
      "The face image is fake because the global face attribute of physical inconsistency is "
      "altered, through manipulation of the local nose region.")


def test_partial_and_uncertain_cases():
  m = np.array([0.9, 0.1, 0.8, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
  assert ex.explain(m, "ffpp") == (
      "The face image is fake because the global face attribute of identity is altered.")
  m = np.array([0.9, 0.1, 0.2, 0.3, 0.1, 0.1, 0.1, 0.1, 0.7, 0.1])
  assert ex.explain(m, "ffpp") == "The face image is fake because of manipulation of the local nose region."
  m = np.array([0.8, 0.3, 0.42, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
  s = ex.explain_structured(m, H)
  assert s["fake"] and s["globals"] == [] and s["locals"] == []
  assert s["most_probable"] == {"node": "identity", "name": "identity", "p": pytest.approx(0.42)}
  assert s["text"] == ("The face image is fake, but no altered face attribute or region is identified "
                       "with confidence (most probable: the global face attribute of identity, 42%).")
  m = np.array([0.8] + [0.001] * 9)
  assert ex.explain(m, H) == ("The face image is fake, but no altered face attribute or region is "
                              "identified with confidence.")
  # Exactly at the threshold is not above it.
  assert ex.explain(np.array([0.5] + [0.0] * 9), H) == "The face image is real."


def test_structured_fields():
  s = ex.explain_structured(_soft("aug_lip_mouth"), H)
  assert s["p_fake"] == pytest.approx(0.97) and s["fake"] is True
  assert [g["node"] for g in s["globals"]] == ["physical_inconsistency"]
  assert [g["name"] for g in s["globals"]] == ["physical inconsistency"]
  assert [l["node"] for l in s["locals"]] == ["lip", "mouth"]
  assert s["most_probable"] is None
  assert ex.explain_batch(np.stack([_soft("real"), _soft("aug_eye")]), H) == [
      "The face image is real.",
      "The face image is fake because the global face attribute of physical inconsistency is "
      "altered, through manipulation of the local eye region."]


def test_generic_hierarchy():
  h = hierarchy.LabelHierarchy(
      nodes=["fake_face", "age", "gender", "pose", "hair_line", "jaw", "left_eye"],
      levels={"fake_face": "primary", "age": 1, "gender": 1, "pose": 1, "hair_line": 2, "jaw": 2, "left_eye": 2},
      edges={"fake_face": ["age", "gender", "pose"], "age": ["hair_line", "jaw"],
             "gender": ["jaw", "left_eye"], "pose": ["jaw"]})
  m = np.array([0.95, 0.9, 0.7, 0.6, 0.2, 0.9, 0.55])
  assert ex.explain(m, h) == (
      "The face image is fake because the global face attributes of age, gender and pose are "
      "altered, through manipulation of the local jaw and left eye regions.")
  m = np.array([0.95, 0.2, 0.1, 0.1, 0.45, 0.1, 0.1])
  assert ex.explain(m, h).endswith("(most probable: the local hair line region, 45%).")


def test_bad_inputs():
  with pytest.raises(ValueError, match=r"shape \(10,\)"):
    ex.explain(np.zeros(9), H)
  with pytest.raises(ValueError, match="NaN"):
    ex.explain(np.full(10, np.nan), H)
  with pytest.raises(ValueError, match="raw scores"):
    ex.explain(np.full(10, 3.0), H)


def test_plot_marginals_png(tmp_path):
  path = ex.plot_marginals(np.stack([_soft("Deepfakes"), _soft("real")]), H, tmp_path / "m.png")
  data = open(path, "rb").read()
  assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
