"""hostenv: the command re-executes itself once with glibc.malloc.hugetlb=1 (or not at all)."""

import os
import subprocess
import sys

import pytest

from sjedd_jax import hostenv

_PROBE = ("import os; from sjedd_jax import hostenv; hostenv.reexec_with_huge_pages(); "
          "print(os.getpid(), os.environ.get('GLIBC_TUNABLES', ''))")


def _run(**env):
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostenv.ENV)}
  out = subprocess.run([sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return out.stdout.split(maxsplit=1) + [""]


@pytest.mark.skipif(not hostenv.huge_pages_possible(), reason="needs glibc >= 2.35 and transparent huge pages")
def test_reexec_sets_the_tunable_once_and_keeps_others():
  _, tunables, *_ = _run()
  assert tunables.strip() == "glibc.malloc.hugetlb=1"
  _, tunables, *_ = _run(GLIBC_TUNABLES="glibc.malloc.arena_max=2")  # kept, tunable appended
  assert tunables.strip() == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"


def test_switched_off_or_already_set():
  _, tunables, *_ = _run(SJEDD_HUGE_PAGES="0")
  assert "hugetlb" not in tunables
  _, tunables, *_ = _run(GLIBC_TUNABLES="glibc.malloc.hugetlb=0")  # the user's choice wins
  assert tunables.strip() == "glibc.malloc.hugetlb=0"
