"""Metric writer: TensorBoard event files (tensorboardX) and a ``metrics.jsonl``.

Only the main process (``jax.process_index() == 0``) writes; every other process gets
a writer whose calls do nothing, so training code can call it unconditionally.

``metrics.jsonl`` holds one JSON object per ``scalars`` call: ``{"step": 100,
"time": 1718000000.0, "loss": 0.42, ...}``. Values are converted to Python floats
(numpy/jax scalars and size-1 arrays included); NaN/inf become ``null`` so every line
is strict JSON (the event file keeps the real value). The file is opened for append,
never truncated; on resume from step S pass ``resume_step=S`` to drop the lines with
step > S first (written after the checkpoint by the run that crashed) and to purge
those steps from TensorBoard's view of the event files.

Example::

    with MetricWriter(workdir, resume_step=restored_step) as w:
      w.scalars(step, {"train/loss": loss, "train/lr": lr})

Event files can be read back without TensorBoard or TensorFlow with
``read_scalars(workdir)``.
"""

from __future__ import annotations

import glob
import json
import math
import os
import struct
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["MetricWriter", "truncate_after", "read_jsonl", "read_scalars"]

JSONL_NAME = "metrics.jsonl"
_RESERVED = ("step", "time")


def _is_main_process() -> bool:
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def _to_float(key: str, value: Any) -> float:
  a = np.asarray(value)
  if a.size != 1:
    raise ValueError(f"metric {key!r} must be a scalar, got an array of shape {a.shape}")
  try:
    return float(a.reshape(()))
  except (TypeError, ValueError) as e:
    raise ValueError(f"metric {key!r} must be a number, got {value!r}") from e


def _to_step(step: Any) -> int:
  a = np.asarray(step)
  if a.size != 1 or not np.issubdtype(a.dtype, np.number) or float(a) != int(a):
    raise ValueError(f"step must be an integer, got {step!r}")
  return int(a)


def truncate_after(path: str | os.PathLike, step: int) -> int:
  """Drops the lines of a metrics JSONL file whose step is greater than ``step``.

  A torn last line (the process died mid-write) is dropped too. The file is
  rewritten atomically; a missing file is fine. Returns the number of lines dropped.
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    lines = f.read().splitlines()
  keep, dropped = [], 0
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      s = json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
      if i == len(lines) - 1:  # torn final write
        dropped += 1
        continue
      raise ValueError(f"{path}:{i + 1}: not a metrics record (JSON object with a 'step'): {line[:80]!r}") from None
    if s > step:
      dropped += 1
    else:
      keep.append(line)
  if dropped:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write("".join(l + "\n" for l in keep))
    os.replace(tmp, path)
  return dropped


def drop_records(path: str | os.PathLike, drop) -> int:
  """Removes the records of a metrics JSONL file for which ``drop(record)`` is true (atomically)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    return 0
  recs = read_jsonl(path)
  keep = [r for r in recs if not drop(r)]
  if len(keep) != len(recs):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write("".join(json.dumps(r, allow_nan=False) + "\n" for r in keep))
    os.replace(tmp, path)
  return len(recs) - len(keep)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All records of a metrics JSONL file (a directory means its ``metrics.jsonl``)."""
  path = os.fspath(path)
  if os.path.isdir(path):
    path = os.path.join(path, JSONL_NAME)
  with open(path) as f:
    return [json.loads(l) for l in f if l.strip()]


class MetricWriter:
  """Writes scalars to TensorBoard event files and ``metrics.jsonl`` in ``workdir``.

  Args:
    workdir: output directory (created on the main process).
    enabled: False makes every call a no-op (e.g. for evaluation-only runs).
    resume_step: when resuming from a checkpoint at this step, drop JSONL lines with a
      larger step and purge steps > resume_step from TensorBoard.
    tensorboard: also write event files (True) or only the JSONL (False).
    is_main: override the ``jax.process_index() == 0`` test (for tests).
    flush_secs: how often tensorboardX flushes its event queue in the background.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True, resume_step: int | None = None,
               tensorboard: bool = True, is_main: bool | None = None, flush_secs: int = 30):
    self.workdir = os.fspath(workdir)
    self.active = bool(enabled) and (_is_main_process() if is_main is None else bool(is_main))
    self.jsonl_path = os.path.join(self.workdir, JSONL_NAME)
    self._jsonl = None
    self._tb = None
    if not self.active:
      return
    os.makedirs(self.workdir, exist_ok=True)
    if resume_step is not None:
      n = truncate_after(self.jsonl_path, _to_step(resume_step))
      if n:
        warnings.warn(f"{self.jsonl_path}: dropped {n} line(s) written after step {resume_step} "
                      "by the interrupted run", UserWarning, stacklevel=2)
    self._jsonl = open(self.jsonl_path, "a")
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      purge = None if resume_step is None else _to_step(resume_step) + 1
      # tensorboardX names event files by the second and opens them with "wb": a
      # writer restarted within the same second would overwrite the previous file.
      suffix = f".{time.time_ns()}.{os.getpid()}"
      self._tb = SummaryWriter(logdir=self.workdir, purge_step=purge, flush_secs=flush_secs,
                               filename_suffix=suffix)

  def scalars(self, step: Any, scalars: Mapping[str, Any]) -> None:
    """Writes ``{name: value}`` at ``step`` (one JSONL line, one TB scalar each)."""
    if not self.active:
      return
    if self._jsonl is None:
      raise RuntimeError(f"MetricWriter({self.workdir!r}) is closed")
    step = _to_step(step)
    clash = [k for k in scalars if k in _RESERVED]
    if clash:
      raise ValueError(f"metric names {clash} are reserved for the record itself; rename them")
    values = {str(k): _to_float(k, v) for k, v in scalars.items()}
    now = time.time()
    record = {"step": step, "time": now}
    record.update({k: (v if math.isfinite(v) else None) for k, v in values.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in values.items():
        self._tb.add_scalar(k, v, global_step=step, walltime=now)

  def flush(self) -> None:
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "MetricWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


# ------------------------------------------------------------- reading back
def _records(path: str):
  """Yields the payloads of a TFRecord file, checking the framing and CRCs."""
  from tensorboardX.record_writer import masked_crc32c  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    data = f.read()
  pos = 0
  while pos < len(data):
    if pos + 12 > len(data):
      raise ValueError(f"{path}: truncated record header at byte {pos}")
    header = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", header)
    (len_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    if masked_crc32c(header) != len_crc:
      raise ValueError(f"{path}: bad length CRC at byte {pos}")
    start, end = pos + 12, pos + 12 + length
    if end + 4 > len(data):
      raise ValueError(f"{path}: truncated record at byte {pos}")
    payload = data[start:end]
    (data_crc,) = struct.unpack("<I", data[end:end + 4])
    if masked_crc32c(payload) != data_crc:
      raise ValueError(f"{path}: bad data CRC in the record at byte {pos}")
    yield payload
    pos = end + 4


def read_scalars(logdir: str | os.PathLike) -> dict[str, list[tuple[int, float]]]:
  """Scalars in the event files of ``logdir``: {tag: [(step, value), ...]} in write order.

  Files are read in name (creation time) order; a session-start event with a purge
  step hides earlier values at steps >= it, as TensorBoard does on resume.
  """
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  out: dict[str, list[tuple[int, float]]] = {}
  files = sorted(glob.glob(os.path.join(os.fspath(logdir), "events.out.tfevents.*")))
  for path in files:
    for payload in _records(path):
      ev = event_pb2.Event.FromString(payload)
      if ev.HasField("session_log") and ev.session_log.status == ev.session_log.START and ev.step:
        out = {t: [(s, v) for s, v in vals if s < ev.step] for t, vals in out.items()}
      if ev.HasField("summary"):
        for val in ev.summary.value:
          if val.HasField("simple_value"):
            out.setdefault(val.tag, []).append((int(ev.step), float(val.simple_value)))
  return out
