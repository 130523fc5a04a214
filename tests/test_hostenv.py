"""hostenv: the command re-executes itself once with glibc.malloc.hugetlb=1 (or not at all)."""

import os
import subprocess
import sys

import pytest

from sjedd_jax import hostenv

_PROBE = ("import os; from sjedd_jax import hostenv; hostenv.reexec_with_huge_pages(); "
          "print(os.environ.get('GLIBC_TUNABLES', '')); print(hostenv.huge_pages_on())")


def _run(**env):
  """(GLIBC_TUNABLES, huge_pages_on()) as seen by a fresh process after reexec_with_huge_pages()."""
  base = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hostenv.ENV)}
  out = subprocess.run([sys.executable, "-c", _PROBE], env={**base, **env}, capture_output=True, text=True,
                       check=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  tunables, on = out.stdout.split("\n")[:2]
  return tunables, on == "True"


@pytest.mark.skipif(not hostenv.huge_pages_possible(), reason="needs glibc >= 2.35 and transparent huge pages")
def test_reexec_sets_the_tunable_once_and_keeps_others():
  assert _run() == ("glibc.malloc.hugetlb=1", True)
  # kept, tunable appended
  assert _run(GLIBC_TUNABLES="glibc.malloc.arena_max=2") == ("glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1", True)


def test_switched_off_or_already_set():
  tunables, on = _run(SJEDD_HUGE_PAGES="0")
  assert "hugetlb" not in tunables and not on
  # the user's choice wins, and is reported as off
  assert _run(GLIBC_TUNABLES="glibc.malloc.hugetlb=0") == ("glibc.malloc.hugetlb=0", False)
