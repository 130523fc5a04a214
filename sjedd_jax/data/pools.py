"""Worker pools for the data tools (synthetic world, expansion, preprocessing) that run OpenCV.

OpenCV's own thread pool costs more than it saves on small images and can
deadlock a forked child, so workers run it on one thread, and pools start by
forkserver (else spawn).
"""

from __future__ import annotations

import multiprocessing

import cv2


class single_threaded_cv2:  # pylint: disable=invalid-name
  """Context: OpenCV on one thread (its thread pool costs more than it saves on tiny images)."""

  def __enter__(self):
    self.n = cv2.getNumThreads()
    cv2.setNumThreads(1)

  def __exit__(self, *exc):
    cv2.setNumThreads(self.n)


def init_worker() -> None:
  cv2.setNumThreads(1)


def pool_context():
  """A multiprocessing context safe after OpenCV ran in this process: forkserver, else spawn.

  (A plain fork can deadlock in the child when the parent's OpenCV thread pool was in use.)
  """
  methods = multiprocessing.get_all_start_methods()
  return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
