"""Files a run writes, on a local disk or in a bucket (`gs://...`, `s3://...`), written whole.

A file a user reads is either the old one or the complete new one:
- local paths: a temporary file beside the target, fsynced, renamed onto it (`os.replace`);
- cloud URIs: object stores have no rename, but an object upload is itself atomic (readers
  see the old object or the whole new one), so the block writes into a local temporary file
  that is uploaded in one go when it succeeds.

Cloud URIs go through `etils.epath` (gs://, s3://, az://, hf://): the path library orbax
itself uses for checkpoints, already installed with it, which picks tf.io.gfile when
TensorFlow is installed and else fsspec (gcsfs for gs://, the `tpu` extra). Paths stay plain
strings here (`join`, `abspath`, ...), so everything that prints or records them is unchanged.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import io as std_io
import json
import os
import re
import shutil
import tempfile
import time
from typing import IO, Iterator

from vision_core.errors import UserInputError

# The schemes etils.epath has a backend for; any other `scheme://` would silently become a
# local folder named `scheme:`.
CLOUD_SCHEMES = ('gs', 's3', 'az', 'hf')
_URI = re.compile(r'^([A-Za-z][A-Za-z0-9+.-]*)://')
_UPLOAD_CHUNK = 8 << 20


def is_uri(path: str | os.PathLike) -> bool:
  """True for `gs://bucket/...` style paths (raises `UserInputError` for unknown schemes)."""
  match = _URI.match(os.fspath(path))
  if match is None:
    return False
  if match.group(1) not in CLOUD_SCHEMES:  # epath knows them in lower case only.
    raise UserInputError(f'{os.fspath(path)}: unsupported URI scheme {match.group(1)!r}; '
                         f'expected a local path or one of {", ".join(CLOUD_SCHEMES)}://.')
  return True


def expand_user(path: str | os.PathLike | None, *, name: str | None = None) -> str | None:
  """`path` with a leading `~` or `~user` replaced by that home folder, as a shell would.

  A shell expands `~` only at the start of a word, so `--workdir=~/runs`,
  `--config.dataset=~/data` or a path in a config file reach us with a literal `~`, which
  `open()` and `os.makedirs` would take as a folder named `~` in the current folder. Only
  the entry points that take a user's text call this (command lines, their configs); library
  functions take paths literally, as `open()`, numpy and PIL do.

  None, '' and anything not starting with `~` come back unchanged: URIs (a `scheme://` never
  starts with `~`) and a `~` inside a path (`a/~b`), which no shell expands either. Raises
  `UserInputError` when `~user` names no user (or `~` has no home folder) rather than create
  that literal folder; `name` is how the message calls the path (a flag, a config field).
  """
  if path is None:
    return None
  text = os.fspath(path)
  if not text.startswith('~'):
    return text
  expanded = os.path.expanduser(text)
  if expanded.startswith('~'):
    head = text.split('/', 1)[0]
    raise UserInputError(f'{f"{name}=" if name else ""}{text}: cannot expand {head}: '
                         'no such user or home folder; expected ~/PATH, ~USER/PATH of an '
                         f'existing user, or ./{text} for a local file named so.')
  return expanded


def path_arg(text: str) -> str:
  """`type=` of argparse path arguments: `expand_user(text)`.

  argparse reports a failure as `argument --FLAG: message` (exit status 2), so the message
  names the flag; a ValueError would become "invalid path_arg value" instead.
  """
  try:
    return expand_user(text)
  except UserInputError as e:
    raise argparse.ArgumentTypeError(str(e)) from None


# The package fsspec needs per scheme (epath uses fsspec unless TensorFlow is installed).
_FSSPEC_PACKAGES = {'gs': ('gcs', 'gcsfs'), 's3': ('s3', 's3fs'), 'az': ('az', 'adlfs'),
                    'hf': ('hf', 'huggingface_hub')}


@functools.cache
def _epath_uses_tensorflow() -> bool:
  """epath's own rule: tf.io.gfile when TensorFlow is installed, unless EPATH_USE_TF=0."""
  if os.environ.get('EPATH_USE_TF', '').lower() in ('false', 'no', 'f', '0'):
    return False
  return importlib.util.find_spec('tensorflow') is not None


def _epath(path: str | os.PathLike):
  """The etils.epath.Path of a URI; a clear error where its filesystem is not installed."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  scheme = path.split('://', 1)[0]
  if not _epath_uses_tensorflow():
    import fsspec  # pylint: disable=g-import-not-at-top
    protocol, package = _FSSPEC_PACKAGES[scheme]
    try:
      fsspec.get_filesystem_class(protocol)
    except ImportError:
      extra = " (or the project's [tpu] extra)" if scheme == 'gs' else ''
      raise UserInputError(f'{path}: {scheme}:// paths need the {package} package: '
                           f'pip install {package}{extra}.') from None
  return epath.Path(path)


def join(base: str | os.PathLike, *parts: str) -> str:
  """`os.path.join` for local paths; '/'-joined for URIs (never a backslash)."""
  base = os.fspath(base)
  if is_uri(base):
    return '/'.join([base.rstrip('/'), *(p.strip('/') for p in parts)])
  return os.path.join(base, *parts)


def abspath(path: str | os.PathLike) -> str:
  """`os.path.abspath` for local paths; a URI unchanged (abspath would mangle `gs://b` into
  `{cwd}/gs:/b`)."""
  path = os.fspath(path)
  return path if is_uri(path) else os.path.abspath(path)


def dirname(path: str | os.PathLike) -> str:
  path = os.fspath(path)
  if is_uri(path):
    head, _, _ = path.rstrip('/').rpartition('/')
    return head
  return os.path.dirname(path)


def exists(path: str | os.PathLike) -> bool:
  return _epath(path).exists() if is_uri(path) else os.path.exists(path)


def isdir(path: str | os.PathLike) -> bool:
  return _epath(path).is_dir() if is_uri(path) else os.path.isdir(path)


def makedirs(path: str | os.PathLike) -> None:
  """Creates a local folder and its parents. A no-op for URIs: object stores have no folders
  (an object's name is its whole path), and gcsfs would try to create a missing bucket."""
  if not is_uri(path):
    if os.path.exists(path) and not os.path.isdir(path):  # e.g. --workdir naming a file
      raise UserInputError(f'{os.fspath(path)} exists and is not a folder; choose another path.')
    check_can_create(path)
    os.makedirs(path, exist_ok=True)


def read_bytes(path: str | os.PathLike) -> bytes:
  if is_uri(path):
    return _epath(path).read_bytes()
  with open(path, 'rb') as f:
    return f.read()


def readable(path: str | os.PathLike) -> str | std_io.BytesIO:
  """What `np.load` / PIL can read: a local path itself, or a URI's bytes in memory (zip
  archives seek back and forth; over the network that is one request per seek)."""
  return std_io.BytesIO(read_bytes(path)) if is_uri(path) else os.fspath(path)


def check_can_create(path: str | os.PathLike, *, name: str | None = None) -> None:
  """Raises `UserInputError` if the folders above local `path` cannot be made: the nearest
  existing one is a file. `name` is how the message calls `path` (default: the path)."""
  if is_uri(path):
    return
  parent = os.path.dirname(os.path.abspath(os.fspath(path)))
  while not os.path.exists(parent) and os.path.dirname(parent) != parent:
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserInputError(f'{name or os.fspath(path)}: cannot create it, {parent} exists and is '
                         'not a folder.')


def check_can_write(path: str | os.PathLike, *, overwrite: bool) -> None:
  """Raises `UserInputError` if `path` exists and `overwrite` is False.

  Also, for local paths, whatever `overwrite`: if `path` is a folder, or if a part of its
  folder path exists but is a file (so that the folder cannot be created).
  """
  if not is_uri(path):
    if os.path.isdir(os.fspath(path)):
      raise UserInputError(f'{os.fspath(path)} is a folder; cannot write a file there.')
    check_can_create(path)
  if exists(path) and not overwrite:
    raise UserInputError(
        f'{os.fspath(path)} already exists; refusing to overwrite it '
        '(pass overwrite=True / --force to replace it).')


def read_json_object(path: str | os.PathLike, what: str) -> dict:
  """The JSON object in `path` (local or URI); `what` says which file it should be, for the
  message when it is not JSON or holds an array, string, number or null instead."""
  path = os.fspath(path)
  try:
    value = json.loads(read_bytes(path))
  except ValueError as e:  # (UnicodeDecodeError, too)
    raise UserInputError(f'{path}: not valid JSON ({e}).') from None
  if not isinstance(value, dict):
    found = {list: 'an array', str: 'a string', bool: 'a boolean', type(None): 'null'}.get(
        type(value), 'a number')
    raise UserInputError(f'{path}: expected a JSON object ({what}), found {found}.')
  return value


def check_not_an_input(path: str | os.PathLike, inputs, *, flag: str) -> None:
  """Raises `UserInputError` if the output `path` is one of `inputs` (files this run reads
  or writes): `--force` lets an output replace an old output, never the run's own files."""
  def key(p):
    p = os.fspath(p)
    return p if is_uri(p) else os.path.realpath(p)
  target = key(path)
  same = next((os.fspath(p) for p in inputs if p and key(p) == target), None)
  if same is not None:
    raise UserInputError(f'{flag} {os.fspath(path)} is also {same}, an input or output of '
                         'this run; give it another name.')


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = 'wb', *,
                 overwrite: bool = False) -> Iterator[IO]:
  """Opens a temporary file; puts it at `path` only if the block succeeds.

  Local: the temporary lies beside `path` and is renamed onto it. URI: it is a local
  anonymous file, uploaded as one object. An exception or Ctrl-C inside the block leaves
  `path` untouched and removes the temporary. `mode` is 'wb' or 'w' (UTF-8 text).
  """
  path = os.fspath(path)
  check_can_write(path, overwrite=overwrite)
  if is_uri(path):
    with _uri_atomic_write(path, mode, overwrite=overwrite) as f:
      yield f
    return
  directory = os.path.dirname(os.path.abspath(path))
  try:
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp',
                               dir=directory)
  except PermissionError:  # its message would name our hidden temporary file
    raise UserInputError(f'{path}: cannot write there (permission denied for the folder '
                         f'{directory}).') from None
  try:
    # mkstemp creates 0600 files; give the result the permissions a plain open() would.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    # Text is UTF-8 whatever the locale (as for URIs): an ASCII locale (LANG=C without
    # Python's UTF-8 mode) would fail on the first non-ASCII character.
    with os.fdopen(fd, mode, encoding=None if 'b' in mode else 'utf-8') as f:
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


@contextlib.contextmanager
def _uri_atomic_write(path: str, mode: str, *, overwrite: bool) -> Iterator[IO]:
  if mode not in ('w', 'wb'):
    raise ValueError(f'atomic_write mode {mode!r}: expected "w" or "wb".')
  with tempfile.TemporaryFile() as raw:  # Unnamed: the OS removes it however we leave.
    if mode == 'w':
      text = std_io.TextIOWrapper(raw, encoding='utf-8')
      try:
        yield text
      finally:
        text.detach()  # Flushes into `raw` and leaves it open (for the upload).
    else:
      yield raw
    # An object store has no create-if-absent through epath: this check and the upload
    # below leave a window of one request, where a local rename leaves none.
    if not overwrite and exists(path):
      raise UserInputError(f'{path} appeared while it was being written; not overwriting it.')
    raw.seek(0)
    _upload(raw, path)


def _upload(source: IO[bytes], path: str) -> None:
  """Streams `source` into the object `path`; the object appears only when complete."""
  out = _epath(path).open('wb')
  try:
    shutil.copyfileobj(source, out, _UPLOAD_CHUNK)
  except BaseException:
    # Do not close: closing an fsspec/gcsfs file finishes the upload with what it has.
    # discard() cancels the resumable upload; `closed` stops __del__ from closing it.
    discard = getattr(out, 'discard', None)
    if callable(discard):
      discard()
    with contextlib.suppress(AttributeError):
      out.closed = True
    raise
  out.close()


class AppendFile:
  """A file that grows by appends (metrics.jsonl, TensorBoard events), on a disk or a bucket.

  Local: opened in append mode, flushed after every `append`, as a log file should be.
  URI: objects cannot be appended to, so the whole content is kept in memory (logs are small:
  a row per logged step) and the object is rewritten with all of it (an atomic upload) when
  `upload_every_s` seconds have passed since the last upload, and on `flush()` / `close()`.
  The interval keeps within an object store's write rate per object (GCS: about one per
  second); a crash loses at most that many seconds of rows. An existing object is read first,
  so a resumed run continues the same file.
  """

  def __init__(self, path: str | os.PathLike, *, upload_every_s: float = 10.0):
    self.path = os.fspath(path)
    self._uri = is_uri(self.path)
    self._upload_every_s = upload_every_s
    if self._uri:
      self._content = bytearray(read_bytes(self.path) if exists(self.path) else b'')
      self._dirty, self._last_upload = False, -float('inf')
    else:
      self._file = None  # Opened on the first append, so an unused log leaves no file.

  def append(self, data: bytes) -> None:
    if not self._uri:
      if self._file is None:
        self._file = open(self.path, 'ab')  # pylint: disable=consider-using-with
      self._file.write(data)
      self._file.flush()
      return
    self._content += data
    self._dirty = True
    if time.monotonic() - self._last_upload >= self._upload_every_s:
      self.flush()

  def flush(self) -> None:
    """Local: already flushed. URI: uploads the whole content if anything was appended."""
    if self._uri and self._dirty:
      with atomic_write(self.path, 'wb', overwrite=True) as f:
        f.write(self._content)
      self._dirty, self._last_upload = False, time.monotonic()

  def close(self) -> None:
    if self._uri:
      self.flush()
    elif self._file is not None:
      self._file.close()
