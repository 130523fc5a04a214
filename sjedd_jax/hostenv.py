"""Host memory settings for XLA:CPU: glibc's malloc keeps a step's buffers, in huge pages.

XLA:CPU allocates each step's large temporary buffers anew and frees them after
the step. With glibc's defaults, malloc serves buffers of more than a few MiB
with fresh ``mmap`` pages and gives them back when they are freed, so every
step page-faults its working set in again, 4 KiB at a time: at ViT-B/32 batch 8
about 0.7 million minor faults per training step. Two sets of glibc tunables
(docs/performance.md, "Stacked layers and huge pages" and "What glibc's malloc
keeps"):

* ``HUGE`` (``glibc.malloc.hugetlb=1``, glibc 2.35+ with transparent huge pages
  on): malloc asks the kernel for 2 MiB pages. 15x fewer faults, a 1.10x faster
  ViT-B/32 step.
* ``KEEP`` (``mmap_max=0``, ``trim_threshold`` 64 GiB, ``top_pad`` 1 GiB): large
  blocks come from the heap, and freed memory stays there for the next step
  instead of going back to the kernel. The small steps gain most (the SJEDD
  synthetic step, the detectors' twins); the cost is that the process keeps its
  peak memory until it exits.

glibc reads tunables only when a process starts, so a command line tool calls
``reexec_with_malloc_tunables()`` first (a JAX tool ``prepare_jax_process()``, which runs
``run_programs_on_calling_thread()`` after it): it starts the same command again, once,
with the tunables added to ``GLIBC_TUNABLES``. A tunable the user already set is
left as it is. ``SJEDD_HUGE_PAGES=0`` leaves out ``HUGE``, ``SJEDD_MALLOC_KEEP=0``
leaves out ``KEEP``; nothing happens on other C libraries.

``KEEP`` only holds for memory malloc takes from its main heap, which only the
process's main thread uses. Every other thread gets one of glibc's per-thread
arenas, whose heaps are at most 64 MiB, and a larger block asked for there is
``mmap``-ed whatever ``mmap_max`` says (glibc's ``sysmalloc`` falls back to it) and
unmapped when freed. XLA:CPU runs a single-device program on a worker thread
(JAX's asynchronous dispatch) and allocates the program's temporaries there, in
one block: 9.2 GiB for MC-LCR's bi-level step at 256 px, mapped and faulted in
anew at every step (5,000 huge-page faults, 1.6 s of kernel time per step).
``run_programs_on_calling_thread()`` turns that dispatch off, so a program runs on
the Python thread that calls it and its temporaries come from the main heap that
``KEEP`` keeps. It applies only under ``KEEP`` (without it the block is mapped
anew either way) and only to single-device programs (XLA:CPU runs a program over
several devices on its own threads regardless); ``SJEDD_INLINE_DISPATCH=0`` leaves
JAX's default. The calling thread then waits for each program it runs: the
training loop no longer runs ahead of the step it dispatched (its input pipeline
prefetches on threads of its own; the README's main command is not slower).
"""

from __future__ import annotations

import os
import platform
import sys

ENV = "SJEDD_HUGE_PAGES"          # "0": no huge pages
KEEP_ENV = "SJEDD_MALLOC_KEEP"    # "0": glibc's own mmap and trim behaviour
INLINE_ENV = "SJEDD_INLINE_DISPATCH"  # "0": JAX's asynchronous dispatch on the CPU
INLINE_OPTION = "jax_cpu_enable_async_dispatch"
TUNABLE = "glibc.malloc.hugetlb"
HUGE = {TUNABLE: "1"}
KEEP = {"glibc.malloc.mmap_max": "0",                   # large blocks from the heap, not mmap
        "glibc.malloc.trim_threshold": str(64 << 30),    # never give freed heap back
        "glibc.malloc.top_pad": str(1 << 30)}            # grow the heap in 1 GiB steps
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def _glibc_version() -> tuple[int, int] | None:
  if not sys.platform.startswith("linux"):
    return None
  libc, version = platform.libc_ver()
  try:
    return tuple(int(x) for x in version.split(".")[:2]) if libc == "glibc" else None
  except ValueError:
    return None


def huge_pages_possible() -> bool:
  """glibc >= 2.35 on Linux with transparent huge pages "always" or "madvise"."""
  v = _glibc_version()
  if v is None or v < (2, 35):
    return False
  try:
    with open(_THP) as f:
      return "[never]" not in f.read()
  except OSError:
    return False


def _tunables() -> dict[str, str]:
  """The tunables ``GLIBC_TUNABLES`` sets, by name."""
  out = {}
  for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
    name, sep, value = item.partition("=")
    if sep:
      out[name] = value
  return out


def huge_pages_on() -> bool:
  """Whether this process runs with glibc's malloc huge pages (a nonzero ``glibc.malloc.hugetlb``)."""
  return _tunables().get(TUNABLE) not in (None, "", "0")


def malloc_keep_on() -> bool:
  """Whether this process runs with ``KEEP``'s values (malloc keeps freed memory for the next step)."""
  return all(_tunables().get(k) == v for k, v in KEEP.items())


def inline_dispatch_on() -> bool:
  """Whether JAX runs single-device CPU programs on the calling thread (``run_programs_on_calling_thread``)."""
  if "jax" not in sys.modules:
    return False
  import jax  # pylint: disable=g-import-not-at-top
  return not jax.config.values.get(INLINE_OPTION, True)


def malloc_summary() -> str:
  """A few words for reports: which of the settings this process runs with (the dispatch only
  in a process that has loaded JAX)."""
  out = f"malloc huge pages {'on' if huge_pages_on() else 'off'}, keeps freed memory {'on' if malloc_keep_on() else 'off'}"
  if "jax" in sys.modules:
    out += f", JAX's CPU programs run on the {'calling thread' if inline_dispatch_on() else 'dispatch thread'}"
  return out


def run_programs_on_calling_thread() -> bool:
  """Under ``KEEP``, makes JAX run single-device CPU programs on the thread that calls them (the
  module docstring says why); returns whether it did.

  Call it before JAX's CPU backend starts (before the first array or compiled program): the
  option is read when the backend is created, and a later call raises a ``RuntimeError`` saying
  so. ``SJEDD_INLINE_DISPATCH=0`` keeps JAX's default (asynchronous dispatch).
  """
  if os.environ.get(INLINE_ENV, "1") == "0" or not malloc_keep_on():
    return False
  import jax  # pylint: disable=g-import-not-at-top
  if INLINE_OPTION not in jax.config.values:   # a jax without the option: its default stays
    return False
  try:  # jax's private record of started backends (jax 0.10); without it, no check
    from jax._src import xla_bridge  # pylint: disable=g-import-not-at-top
    started = bool(getattr(xla_bridge, "_backends", None))
  except ImportError:
    started = False
  if started:
    if inline_dispatch_on():
      return True
    raise RuntimeError("hostenv.run_programs_on_calling_thread() was called after JAX's backends started; "
                       "call it before the first JAX array or program")
  jax.config.update(INLINE_OPTION, False)
  return True


def wanted_tunables(huge: bool = True, keep: bool = True) -> dict[str, str]:
  """The tunables ``reexec_with_malloc_tunables`` would add: ``HUGE`` and ``KEEP`` where asked for,
  possible and not switched off by ``SJEDD_HUGE_PAGES=0`` / ``SJEDD_MALLOC_KEEP=0``, less any
  tunable ``GLIBC_TUNABLES`` already names (the user's choice wins)."""
  out = {}
  if huge and os.environ.get(ENV, "1") != "0" and huge_pages_possible():
    out.update(HUGE)
  if keep and os.environ.get(KEEP_ENV, "1") != "0" and _glibc_version() is not None:
    out.update(KEEP)
  have = _tunables()
  return {k: v for k, v in out.items() if k not in have}


def reexec_with_malloc_tunables(huge: bool = True, keep: bool = True) -> None:
  """Re-executes this process (``sys.orig_argv``) with ``wanted_tunables(huge, keep)`` added, once.

  Call it before any work is done (it replaces the process; nothing returns). In the new process
  every tunable it wants is set, so it does not run again.
  """
  add = wanted_tunables(huge, keep)
  if not add:
    return
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, *(f"{k}={v}" for k, v in add.items())) if t))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)


def prepare_jax_process(huge: bool = True, keep: bool = True) -> None:
  """What a JAX command line tool calls first, before it imports anything that starts JAX:
  ``reexec_with_malloc_tunables(huge, keep)`` (which may restart the process), then
  ``run_programs_on_calling_thread()``. A tool that never runs JAX (the PyTorch release
  benchmark) calls ``reexec_with_malloc_tunables`` alone."""
  reexec_with_malloc_tunables(huge, keep)
  run_programs_on_calling_thread()
