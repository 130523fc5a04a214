"""hostenv: the command re-executes itself once with glibc's malloc tunables (or not at all)."""

import os
import subprocess
import sys

import pytest

from sjedd_jax import hostenv

_PROBE = ("import os; from sjedd_jax import hostenv; hostenv.reexec_with_malloc_tunables(); "
          "print(os.environ.get('GLIBC_TUNABLES', '')); print(hostenv.huge_pages_on()); print(hostenv.malloc_keep_on())")
_KEEP = ":".join(f"{k}={v}" for k, v in hostenv.KEEP.items())
_huge = pytest.mark.skipif(not hostenv.huge_pages_possible(), reason="needs glibc >= 2.35 and transparent huge pages")


def _run(**env):
  """(GLIBC_TUNABLES, huge_pages_on(), malloc_keep_on()) in a fresh process after reexec_with_malloc_tunables()."""
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostenv.ENV, hostenv.KEEP_ENV)}
  out = subprocess.run([sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  tunables, huge, keep = out.stdout.split("\n")[:3]
  return tunables, huge == "True", keep == "True"


@_huge
def test_reexec_sets_the_tunables_once_and_keeps_others():
  assert _run() == (f"glibc.malloc.hugetlb=1:{_KEEP}", True, True)
  # the user's own tunables kept, ours appended
  assert _run(GLIBC_TUNABLES="glibc.malloc.arena_max=2") == (
      f"glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1:{_KEEP}", True, True)


@_huge
def test_each_part_switched_off_or_already_set():
  assert _run(SJEDD_HUGE_PAGES="0") == (_KEEP, False, True)
  assert _run(SJEDD_MALLOC_KEEP="0") == ("glibc.malloc.hugetlb=1", True, False)
  # the user's value wins, and is reported as off
  assert _run(GLIBC_TUNABLES="glibc.malloc.hugetlb=0") == (f"glibc.malloc.hugetlb=0:{_KEEP}", False, True)
  tunables, huge, keep = _run(GLIBC_TUNABLES="glibc.malloc.mmap_max=65536")
  assert tunables.startswith("glibc.malloc.mmap_max=65536:glibc.malloc.hugetlb=1:") and tunables.count("mmap_max") == 1
  assert huge and not keep


def test_both_switched_off_does_nothing():
  assert _run(SJEDD_HUGE_PAGES="0", SJEDD_MALLOC_KEEP="0") == ("", False, False)



_DISPATCH_PROBE = """
import resource, sys
import jax, jax.numpy as jnp
from sjedd_jax import hostenv
if sys.argv[1] == "late":   # the CPU backend starts first
  jnp.zeros(1).block_until_ready()
  try:
    hostenv.run_programs_on_calling_thread()
  except RuntimeError as e:
    print("error", "before the first JAX array" in str(e))
  sys.exit()
on = hostenv.run_programs_on_calling_thread()
# a program with 128 MiB of temporaries (one block; a thread arena's heap holds at most 64 MiB)
def g(x):
  y = jnp.sin(x)
  z = jnp.cos(y - y.mean())
  return ((z - z.mean()) ** 2).sum()
f = jax.jit(g)
x = jnp.ones((32 << 20,), jnp.float32)
faults = []
for _ in range(5):
  before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(on, hostenv.inline_dispatch_on(), min(faults[1:]), ",".join(map(str, faults)))
"""


def _dispatch(order="first", **env):
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostenv.INLINE_ENV)}
  out = subprocess.run([sys.executable, "-c", _DISPATCH_PROBE, order], env={**base, **env}, capture_output=True,
                       text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.split()


@pytest.mark.skipif(hostenv._glibc_version() is None, reason="glibc's arenas")
def test_programs_on_the_calling_thread_keep_their_temporaries():
  # under KEEP, a program run on the calling thread takes its temporaries from the main heap,
  # which keeps them: (almost) no page faults after the first call
  on, inline, faults, per_call = _dispatch(GLIBC_TUNABLES=_KEEP)
  assert (on, inline) == ("True", "True") and int(faults) < 1000, per_call
  # JAX's asynchronous dispatch: a worker thread's arena maps the block anew on every call (measured
  # 32,772-32,808 faults of 4 KiB), unless glibc happened to hand that thread the main arena (it
  # shares arenas out once a process has 8 per core), so the count is not asserted
  on, inline, _, _ = _dispatch(GLIBC_TUNABLES=_KEEP, SJEDD_INLINE_DISPATCH="0")
  assert (on, inline) == ("False", "False")
  # without KEEP it does nothing; after the backend started it says it is too late
  assert _dispatch()[:2] == ["False", "False"]
  assert _dispatch("late", GLIBC_TUNABLES=_KEEP) == ["error", "True"]
