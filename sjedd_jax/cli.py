"""What the command-line jobs (train, evaluate, predict) share: flag parsing and one-line errors.

Every bad input ends in one line naming the file, field or value, never in a raw
traceback as the only explanation:

* exit code 2: a usage, config, data or weights error (the user's input);
* exit code 1: the run itself failed (it diverged, the disk is full): what was
  already written is kept, and the message says where to resume from;
* any other exception is a bug and keeps its traceback.

``run(main)`` replaces ``absl.app.run(main)``; errors raised while the flags (and
``--config`` files, with their ``--config.x=y`` overrides) are parsed get the same
treatment.
"""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import Any

from absl import app, flags


class DivergenceError(RuntimeError):
  """Training produced non-finite losses or parameters (names the step and the last good checkpoint)."""


def _user_errors() -> tuple[type, ...]:
  from sjedd_jax.config import ConfigError  # pylint: disable=g-import-not-at-top
  from sjedd_jax.data.manifest import ManifestError  # pylint: disable=g-import-not-at-top
  from sjedd_jax.data.videos import VideoError  # pylint: disable=g-import-not-at-top
  from sjedd_jax.metrics import MetricsError  # pylint: disable=g-import-not-at-top
  from sjedd_jax.weights import CheckpointError  # pylint: disable=g-import-not-at-top
  return (ConfigError, ManifestError, VideoError, CheckpointError, MetricsError, FileNotFoundError,
          NotADirectoryError, IsADirectoryError, PermissionError)


def _chain(e: BaseException):
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    yield e
    e = e.__cause__ or e.__context__


def explain(e: BaseException) -> tuple[str, int] | None:
  """``(one-line message, exit code)`` for an error a user can act on, else None (a bug)."""
  for x in _chain(e):
    if isinstance(x, OSError) and x.errno == errno.ENOSPC:
      where = f" ({x.filename})" if getattr(x, "filename", None) else ""
      return (f"no space left on device{where}. Free some space and rerun the same command: the run resumes "
              "from its last complete checkpoint.", 1)
  if isinstance(e, DivergenceError):
    return str(e), 1
  user = _user_errors()
  for x in _chain(e):
    if isinstance(x, user):
      msg = str(x).strip() or type(x).__name__
      if isinstance(x, OSError) and getattr(x, "filename", None) and x.filename not in msg:
        msg = f"{x.filename}: {msg}"
      return msg, 2
  return None


def fail(message: str, code: int = 2) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


def guarded(fn: Callable[..., Any], *args, **kwargs) -> Any:
  """Calls ``fn``; a user error or a failed run becomes one line on stderr and its exit code."""
  try:
    return fn(*args, **kwargs)
  except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
  except Exception as e:  # pylint: disable=broad-except
    known = explain(e)
    if known is None:
      raise
    fail(*known)


def parse_flags(argv: list[str], fv: flags.FlagValues | None = None) -> list[str]:
  """absl's flag parsing, with every parsing error (a misspelt ``--config.key``, a config file that
  does not load, a value of the wrong type) as one line and exit code 2."""
  try:
    return (fv if fv is not None else flags.FLAGS)(argv)
  except flags.Error as e:
    fail(f"{e}. Run with --helpshort for the flags.")
  except (AttributeError, KeyError, ValueError, TypeError, OSError, SyntaxError, ImportError) as e:
    fail(_clean(e))
  return argv


def _clean(e: BaseException) -> str:
  text = " ".join(str(e).replace("\\n", "\n").replace("\\'", "'").split()).strip("'\"")
  import re  # pylint: disable=g-import-not-at-top
  missing = re.search(r"No such file or directory: '([^']+)'?", text)
  if missing:
    return f"no such config file: {missing.group(1)}"
  if isinstance(e, (AttributeError, KeyError)):
    m = re.match(r"^'?([\w.]+)'?\s*(Did you mean .*)?$", text)
    if m:
      return f"unknown config key {m.group(1)!r}" + (f" ({m.group(2)[0].lower()}{m.group(2)[1:]})" if m.group(2) else "")
    return f"unknown config key: {text}"
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def config_value(flag) -> Any:
  """A ``config_flags`` flag's value, with a config file that failed to load as one line."""
  try:
    value = flag.value
    value.to_dict()  # config_flags returns a stand-in that raises on use when the file failed to load
    return value
  except (OSError, AttributeError, KeyError, ValueError, TypeError, SyntaxError, ImportError) as e:
    text = _clean(e)
    fail(text if text.startswith("no such config file") else f"--config: {text}")
  return None


def run(main: Callable[[list[str]], Any]) -> None:
  """``absl.app.run(main)`` with one-line errors (see the module docstring)."""
  app.run(lambda argv: guarded(main, argv), flags_parser=parse_flags)


def invoke(module, args: list[str]) -> int:
  """Runs a CLI module (``sjedd_jax.train``, ``evaluate``, ``predict``) in this process with its own
  flags, as its command line would; returns the exit code (tests, notebooks)."""
  fv = flags.FlagValues()
  module.define_flags(fv)
  saved = sys.argv
  sys.argv = ["prog", *args]  # config_flags reads its --config.x=y overrides from sys.argv
  try:
    argv = parse_flags(list(sys.argv), fv)
    guarded(module.main, argv, fv)
  except SystemExit as e:
    return int(e.code or 0) if not isinstance(e.code, str) else 1
  except app.UsageError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  finally:
    sys.argv = saved
  return 0
