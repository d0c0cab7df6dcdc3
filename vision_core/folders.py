"""Output folders that appear whole or not at all, and are never replaced by mistake.

A command that writes a folder (the study's report, an HF export) builds it in
`staging_folder` beside the target and moves it into place with `publish_folder`;
`check_output_folder` decides first whether an existing folder may be replaced. Local paths.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from typing import Iterator

from vision_core import io
from vision_core.errors import UserInputError


def check_output_folder(out: str, *, force: bool, what: str, not_ours) -> None:
  """Refuses an existing non-empty local folder `out` unless `force`, and never one that
  `not_ours(out)` gives a reason for (a string, e.g. 'no study.json': replacing it would
  delete what the user keeps there; None: an earlier output of ours). `what`: the kind of
  output, e.g. 'a study output folder'. A missing `out` must be creatable."""
  if not os.path.lexists(out):
    io.check_can_create(out, name=f'--out {out}')
    return
  if not os.path.isdir(out):
    raise UserInputError(f'{out} exists and is not a folder; choose another --out.')
  if not os.listdir(out):
    return
  reason = not_ours(out)
  if reason:
    raise UserInputError(f'{out} exists and is not {what} ({reason}); refusing to replace it, '
                         'even with --force. Choose another --out.')
  if not force:
    raise UserInputError(f'{out} already holds {what}; pass --force to replace it, or choose '
                         'another --out.')


@contextlib.contextmanager
def staging_folder(out: str) -> Iterator[str]:
  """A new hidden folder `.NAME.partial-RANDOM` beside the local folder `out`, to build it in
  before `publish_folder`; removed however the block ends. The folder is made inside the
  cleanup's reach: a Ctrl-C or SIGTERM (raised as KeyboardInterrupt) just after mkdtemp
  made it left it behind. Made with a plain mkdir's permissions (mkdtemp's are 0700)."""
  parent = os.path.dirname(os.path.abspath(out))
  os.makedirs(parent, exist_ok=True)
  path = os.path.join(parent, f'.{os.path.basename(os.path.abspath(out))}.partial-'
                      f'{secrets.token_hex(8)}')
  try:
    try:
      os.mkdir(path)
    except FileExistsError:  # a clash of 64 random bits: not ours to remove
      path = None
      raise
    yield path
  finally:
    if path is not None:
      shutil.rmtree(path, ignore_errors=True)


def publish_folder(staging: str, out: str) -> None:
  """Renames the complete local folder `staging` onto `out`. An existing `out` (the caller
  has checked that it may be replaced) is moved aside first, put back if the rename fails,
  and deleted only once the new folder is in place: `out` is never half-written. Both lie
  on one filesystem (make `staging` beside `out`)."""
  old = None
  if os.path.lexists(out):
    old = tempfile.mkdtemp(prefix='.' + os.path.basename(out) + '.old-',
                           dir=os.path.dirname(os.path.abspath(out)))
    os.rmdir(old)
    os.rename(out, old)
  try:
    os.rename(staging, out)
  except BaseException:
    if old is not None:
      os.rename(old, out)
    raise
  if old is not None:
    shutil.rmtree(old, ignore_errors=True)
