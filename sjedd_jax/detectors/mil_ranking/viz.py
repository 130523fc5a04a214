"""``predict --plots``: a bar chart of the per-component probabilities with the decoded order (``Detector.plot``)."""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import numpy as np

ORDER_COLOUR = "#c0392b"   # components in the decoded sequence
OTHER_COLOUR = "#95a5a6"   # the rest


def plot_sequence(probs, sequence_ids: Sequence[int], names: Sequence[str], path: str | os.PathLike, *,
                  title: str, threshold: float = 0.5, mil_score: float | None = None,
                  face: np.ndarray | None = None) -> str:
  """One PNG: P_i per component (bars; the decoded ones coloured and numbered 1, 2, ... in their predicted order),
  the decoding threshold (dashed), P(x) beside them when given, and the face crop the model saw when given."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top

  p = np.asarray(probs, np.float64).reshape(-1)
  if p.shape[0] != len(names):
    raise ValueError(f"got {p.shape[0]} probabilities for {len(names)} components")
  position = {int(c): k for k, c in enumerate(sequence_ids, 1) if int(c) > 0}
  width = max(5.0, 0.8 * len(names) + 2.0) + (2.6 if face is not None else 0.0)
  fig = Figure(figsize=(width, 3.4), dpi=100)
  FigureCanvasAgg(fig)
  if face is not None:
    ax_face = fig.add_axes((0.02, 0.12, 2.2 / width, 0.72))
    ax_face.imshow(np.asarray(face))
    ax_face.set_axis_off()
    left = 2.6 / width
  else:
    left = 0.1
  ax = fig.add_axes((left + 0.04, 0.22, 0.94 - left - 0.04, 0.58))
  labels = list(names) + (["P(x)"] if mil_score is not None else [])
  values = list(p) + ([float(mil_score)] if mil_score is not None else [])
  colours = [ORDER_COLOUR if (i + 1) in position else OTHER_COLOUR for i in range(len(names))]
  colours += ["#2c3e50"] if mil_score is not None else []
  x = np.arange(len(values))
  ax.bar(x, values, color=colours)
  for i in range(len(names)):
    if (i + 1) in position:
      ax.text(i, min(p[i] + 0.03, 0.97), str(position[i + 1]), ha="center", va="bottom", fontweight="bold")
  ax.axhline(threshold, color="0.3", linestyle="--", linewidth=1)
  ax.set_ylim(0, 1.08)
  ax.set_ylabel("P(manipulated)")
  ax.set_xticks(x)
  ax.set_xticklabels(labels, rotation=20, ha="right", fontsize="small")
  fig.suptitle("\n".join(textwrap.wrap(title, 80)), fontsize="small")
  d = os.path.dirname(os.fspath(path))
  if d:
    os.makedirs(d, exist_ok=True)
  fig.savefig(path, format="png")
  return os.fspath(path)
