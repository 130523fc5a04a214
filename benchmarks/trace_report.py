r"""What the host did in each profiled training step, and where it waited for the device.

Reads the Chrome/Perfetto trace (``*.trace.json.gz``) that ``jax.profiler`` writes next to
the XProf one (``config.profile_steps="a,b"`` puts it under ``WORKDIR/profile``):

    python benchmarks/trace_report.py /tmp/run/profile

For every ``train`` span (the ``StepTraceAnnotation`` of ``sjedd_jax.train``) it prints the
host time of the step, how many compiled programs it dispatched, and the host-device
synchronisations in the step and between it and the next one. A synchronisation is an event
in which the host waits for a device buffer (``SYNC_EVENTS``: ``np.asarray(jax.Array)``,
``CommonPjRtBuffer::Await``, ...). Then it compares when the host had dispatched the last
step with when the device finished its work: a host far ahead of the device never waited
for it. docs/profiling.md shows a measured report.

The event names are those of jax 0.10 (XLA:CPU and the PJRT C++ client); names that only a
GPU runtime emits are listed too, but were not checked on a GPU.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import sys

# Events in which the host blocks on a device buffer.
SYNC_EVENTS = ("np.asarray(jax.Array)", "CommonPjRtBuffer::Await", "ArrayImpl.copy_to_host_async",
               "PjRtStreamExecutorBuffer::Await", "BlockHostUntilReady", "PjRtCApiBuffer::Await")
DISPATCH_PREFIX = "PjitFunction("
STEP_SPAN = "train"


@dataclasses.dataclass
class Step:
  step: int
  start_ms: float            # from the first event of the trace
  host_ms: float             # duration of the step's `train` span on the host
  dispatches: list[str]      # compiled programs called in the span
  syncs_in: int              # sync events inside the span
  syncs_after: int           # sync events between this span and the next (logging, eval, checkpoints)
  wait_after_ms: float       # host time covered by those events


@dataclasses.dataclass
class Report:
  path: str
  steps: list[Step]
  host_done_ms: float        # end of the last step span
  device_done_ms: float      # end of the last device-side event (execution threads / device streams)

  @property
  def synced_after(self) -> list[int]:
    return [s.step for s in self.steps if s.syncs_in or s.syncs_after]

  def table(self) -> str:
    lines = [f"trace: {self.path}",
             "| step | start ms | host ms | programs dispatched | sync events in step | after step | "
             "host waits after step, ms |",
             "|---:|---:|---:|---|---:|---:|---:|"]
    for s in self.steps:
      progs = ", ".join(f"{n} x{c}" if c > 1 else n for n, c in collections.Counter(s.dispatches).items())
      lines.append(f"| {s.step} | {s.start_ms:.1f} | {s.host_ms:.1f} | {progs or '-'} | {s.syncs_in} | "
                   f"{s.syncs_after} | {s.wait_after_ms:.1f} |")
    n = len(self.steps)
    lines.append("")
    lines.append(f"The host had dispatched all {n} steps at {self.host_done_ms:.1f} ms; the device's last "
                 f"event ended at {self.device_done_ms:.1f} ms.")
    if self.device_done_ms > self.host_done_ms:
      lines.append(f"The host ran {self.device_done_ms - self.host_done_ms:.1f} ms ahead of the device.")
    syncs = self.synced_after
    lines.append("Steps with a host sync in or after them: " + (", ".join(map(str, syncs)) if syncs else "none")
                 + ".")
    return "\n".join(lines)


def _covered(events) -> float:
  """Time covered by the union of the events' intervals (nested events count once)."""
  total, end = 0.0, float("-inf")
  for e in sorted(events, key=lambda e: e["ts"]):
    a, b = e["ts"], e["ts"] + e.get("dur", 0)
    if b > end:
      total += b - max(a, end)
      end = b
  return total


def find_trace(path: str) -> str:
  """``path`` itself, or the newest ``*.trace.json.gz`` under it."""
  if os.path.isfile(path):
    return path
  found = glob.glob(os.path.join(path, "**", "*.trace.json.gz"), recursive=True)
  if not found:
    raise FileNotFoundError(f"no *.trace.json.gz under {path} (run with --config.profile_steps=a,b)")
  return max(found, key=os.path.getmtime)


def load(path: str) -> Report:
  """Parses the trace at (or newest under) ``path``."""
  path = find_trace(path)
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  thread = {(e["pid"], e.get("tid")): e["args"]["name"] for e in events
            if e.get("ph") == "M" and e.get("name") == "thread_name"}
  process = {e["pid"]: e["args"]["name"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"}
  spans = sorted((e for e in events if e.get("ph") == "X"), key=lambda e: e["ts"])
  if not spans:
    raise ValueError(f"{path}: no complete events")
  t0 = spans[0]["ts"]
  steps = [e for e in spans if e["name"] == STEP_SPAN and "step_num" in e.get("args", {})]
  if not steps:
    raise ValueError(f"{path}: no '{STEP_SPAN}' step spans (not a sjedd_jax.train trace?)")
  host_key = (steps[0]["pid"], steps[0]["tid"])  # the training loop's thread
  host = [e for e in spans if (e["pid"], e["tid"]) == host_key and not e["name"].startswith("$")]

  def on_device(e):
    name = thread.get((e["pid"], e.get("tid")), "")
    return (process.get(e["pid"], "").startswith("/device:") or "XLAEigen" in name
            or "PjRtCpuClient" in name) and not e["name"].startswith("$")

  device_done = max((e["ts"] + e.get("dur", 0) for e in spans if on_device(e)), default=t0)
  rows = []
  for i, s in enumerate(steps):
    end = s["ts"] + s["dur"]
    nxt = steps[i + 1]["ts"] if i + 1 < len(steps) else float("inf")
    inside = [e for e in host if s["ts"] <= e["ts"] < end]
    after = [e for e in host if end <= e["ts"] < nxt]
    # A dispatch shows as nested events of one name; count the outermost.
    dispatches, last_end = [], -1.0
    for e in inside:
      if e["name"].startswith(DISPATCH_PREFIX) and e["ts"] >= last_end:
        dispatches.append(e["name"][len(DISPATCH_PREFIX):-1])
        last_end = e["ts"] + e["dur"]
    rows.append(Step(step=int(s["args"]["step_num"]), start_ms=(s["ts"] - t0) / 1e3, host_ms=s["dur"] / 1e3,
                     dispatches=dispatches, syncs_in=sum(e["name"] in SYNC_EVENTS for e in inside),
                     syncs_after=sum(e["name"] in SYNC_EVENTS for e in after),
                     wait_after_ms=_covered([e for e in after if e["name"] in SYNC_EVENTS]) / 1e3))
  return Report(path=path, steps=rows, host_done_ms=(steps[-1]["ts"] + steps[-1]["dur"] - t0) / 1e3,
                device_done_ms=(device_done - t0) / 1e3)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  if len(argv) != 1:
    print(__doc__.split("\n\n")[1], file=sys.stderr)
    print("usage: python benchmarks/trace_report.py WORKDIR/profile | TRACE.trace.json.gz", file=sys.stderr)
    return 2
  try:
    print(load(argv[0]).table())
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
