"""Atomic writes: a file a user reads is either the old one or the complete new one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import IO, Iterator

from vision_core.errors import UserInputError


def check_can_write(path: str | os.PathLike, *, overwrite: bool) -> None:
  """Raises `UserInputError` if `path` exists and `overwrite` is False."""
  if os.path.exists(path) and not overwrite:
    raise UserInputError(
        f'{os.fspath(path)} already exists; refusing to overwrite it '
        '(pass overwrite=True / --force to replace it).')


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'wb', *,
                 overwrite: bool = False) -> Iterator[IO]:
  """Opens a temporary file beside `path`; renames it onto `path` only if the block succeeds.

  An exception or Ctrl-C inside the block leaves `path` untouched and removes the temporary.
  """
  path = os.fspath(path)
  check_can_write(path, overwrite=overwrite)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                             dir=directory)
  try:
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    if not overwrite and os.path.exists(path):
      raise UserInputError(f'{path} appeared while it was being written; not overwriting it.')
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(FileNotFoundError):
      os.remove(tmp)
    raise
