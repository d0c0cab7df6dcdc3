"""User-facing errors: a clear message naming the file, key or field, never a deep traceback."""

from __future__ import annotations

import contextlib
import sys


class UserInputError(ValueError):
  """Bad input that the user can fix: a file, key, field or array of the wrong kind.

  The message must name what was wrong (file, key, field), what was expected and what was
  found. Command-line entry points print it on one line and exit with status 2.
  """


@contextlib.contextmanager
def cli_errors(program: str):
  """Turns `UserInputError` (and a missing file) into `program: message` and exit status 2."""
  try:
    yield
  except (UserInputError, FileNotFoundError) as e:
    print(f'{program}: error: {e}', file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    print(f'{program}: interrupted; nothing half-written was left behind.', file=sys.stderr)
    sys.exit(130)
