"""Host memory setting for XLA:CPU: transparent huge pages for glibc's malloc.

XLA:CPU allocates each step's large temporary buffers anew and frees them after
the step. glibc serves buffers of more than a few MiB with fresh ``mmap``
pages, so every step page-faults its working set back in, 4 KiB at a time: at
ViT-B/32 batch 8 about 0.7 million minor faults per training step. glibc 2.35+
has the tunable ``glibc.malloc.hugetlb=1``, with which malloc asks the kernel
for transparent huge pages (2 MiB): measured 15x fewer faults and a 1.10x faster
step on the 2-core CPU (docs/performance.md, "Stacked layers and huge pages").

glibc reads tunables only when a process starts, so a command line tool calls
``reexec_with_huge_pages()`` first: it starts the same command again, once, with
the tunable added to ``GLIBC_TUNABLES``. It does nothing when the tunable is
already set, on other C libraries, when the kernel's transparent huge pages are
off, or with ``SJEDD_HUGE_PAGES=0``.
"""

from __future__ import annotations

import os
import platform
import sys

ENV = "SJEDD_HUGE_PAGES"
TUNABLE = "glibc.malloc.hugetlb"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_pages_possible() -> bool:
  """glibc >= 2.35 on Linux with transparent huge pages "always" or "madvise"."""
  if not sys.platform.startswith("linux"):
    return False
  libc, version = platform.libc_ver()
  try:
    if libc != "glibc" or tuple(int(x) for x in version.split(".")[:2]) < (2, 35):
      return False
    with open(_THP) as f:
      return "[never]" not in f.read()
  except (OSError, ValueError):
    return False


def _tunable_value() -> str | None:
  """The value ``GLIBC_TUNABLES`` gives ``glibc.malloc.hugetlb``, or None when unset."""
  for item in os.environ.get("GLIBC_TUNABLES", "").split(":"):
    name, _, value = item.partition("=")
    if name == TUNABLE:
      return value
  return None


def huge_pages_on() -> bool:
  """Whether this process runs with glibc's malloc huge pages (a nonzero ``glibc.malloc.hugetlb``)."""
  return _tunable_value() not in (None, "", "0")


def reexec_with_huge_pages() -> None:
  """Re-executes this process (``sys.orig_argv``) with ``glibc.malloc.hugetlb=1``, once.

  Call it before any work is done (it replaces the process; nothing returns).
  """
  if os.environ.get(ENV, "1") == "0" or _tunable_value() is not None or not huge_pages_possible():
    return  # switched off, or the user already chose a value
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, f"{TUNABLE}=1") if t))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, sys.orig_argv, env)
