"""User-facing errors: a clear message naming the file, key or field, never a deep traceback."""

from __future__ import annotations

import contextlib
import signal
import sys


class UserInputError(ValueError):
  """Bad input that the user can fix: a file, key, field or array of the wrong kind.

  The message must name what was wrong (file, key, field), what was expected and what was
  found. Command-line entry points print it on one line and exit with status 2.
  """


class Stopped(KeyboardInterrupt):
  """A training run stopped early on a signal (Ctrl-C, SIGTERM: a preemption notice, `kill`)
  after finishing `step`; `saved` tells whether that step was checkpointed on the way out."""

  def __init__(self, step: int, reason: str, saved: bool):
    super().__init__(f'stopped by {reason} after step {step}')
    self.step, self.reason, self.saved = step, reason, saved
    self.exit_status = 128 + signal.Signals[reason].value  # reason: a signal's name


@contextlib.contextmanager
def cli_errors(program: str):
  """Turns `UserInputError` (and a missing, unwritable or misplaced file: a path the user
  gave) into `program: message` and exit status 2, a diverged run (`FloatingPointError`)
  into its message and status 1, and a stop on a signal into a message saying whether (and
  how) the run can resume."""
  try:
    yield
  except (UserInputError, FileNotFoundError, PermissionError, IsADirectoryError,
          NotADirectoryError) as e:
    print(f'{program}: error: {e}', file=sys.stderr)
    sys.exit(2)
  except FloatingPointError as e:
    # A diverged run: the trainers raise it for a non-finite loss, naming the step and the
    # setting to lower; no traceback (there is no bug to find in it). Status 1: the run failed.
    print(f'{program}: error: {e}', file=sys.stderr)
    sys.exit(1)
  except Stopped as e:
    resume = (f'the checkpoint of step {e.step} is saved: run the same command to resume.'
              if e.saved else 'no checkpoint was saved for it.')
    print(f'{program}: {e}; {resume}', file=sys.stderr)
    sys.exit(e.exit_status)
  except KeyboardInterrupt:
    print(f'{program}: interrupted; nothing half-written was left behind.', file=sys.stderr)
    sys.exit(130)
