"""Flat `.npz` parameter files: `'/'`-joined keys, one array per leaf, no pickle.

This is the layout of the official ViT checkpoints (gs://vit_models/...), and the one we
write, so that files move freely between this project and the official code.
"""

from __future__ import annotations

import io as std_io
import os
import zipfile
from typing import Any, Mapping

import numpy as np

from vision_core import io
from vision_core.errors import UserInputError

Tree = Mapping[str, Any]
# check_matches lists this many mismatched keys; a wrong model size mismatches hundreds.
MAX_LISTED = 20


def flatten(tree: Tree, prefix: str = '') -> dict[str, Any]:
  """`{'a': {'b': x}}` -> `{'a/b': x}`. Empty sub-dicts vanish (as in the official files)."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + '/'))
    else:
      flat[name] = value
  return flat


def unflatten(flat: Mapping[str, Any], *, source: str = '') -> dict[str, Any]:
  """`{'a/b': x}` -> `{'a': {'b': x}}`. `source` (a file) prefixes the errors."""
  where = f'{source}: ' if source else ''
  tree: dict[str, Any] = {}
  for name, value in flat.items():
    *parents, leaf = name.split('/')
    node = tree
    for part in parents:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise UserInputError(f'{where}key {name!r}: {part!r} is both an array and a group of '
                             'arrays.')
    if isinstance(node.get(leaf), dict):  # else the array would replace the whole group
      raise UserInputError(f'{where}key {name!r}: {leaf!r} is both an array and a group of '
                           'arrays.')
    node[leaf] = value
  return tree


def load_flat(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads every array of an `.npz` file (local path or URI) into memory, refusing pickles.

  Raises:
    FileNotFoundError: no file at `path` (the message names it).
    UserInputError: not an npz/zip file, or an entry holds pickled Python objects.
  """
  path = os.fspath(path)
  if not io.exists(path):
    raise FileNotFoundError(f'{path}: no such checkpoint file.')
  readable = io.readable(path)
  try:
    archive = np.load(readable, allow_pickle=False)
  except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
    # Neither zip nor .npy: numpy then assumes a pickle and says so, which misleads about an
    # empty file, a saved error page, a text file... Show how the file starts instead.
    if isinstance(e, EOFError) or 'pickle' in str(e).lower():
      head = _head(readable)
      reason = f'it starts with {head!r}' if head else 'it is empty'
    else:
      reason = str(e)
    raise UserInputError(f'{path}: not a readable .npz file ({reason}).') from None
  if not isinstance(archive, np.lib.npyio.NpzFile):
    raise UserInputError(f'{path}: holds a single array, expected an .npz of named arrays.')
  arrays = {}
  with archive:
    members = set(archive.zip.namelist())
    for key in archive.files:
      if key + '.npy' not in members:
        # numpy hands out other zip members as raw bytes: this is some other zip archive,
        # such as a PyTorch checkpoint (`data.pkl`, `data/0`, ...).
        raise UserInputError(
            f'{path}: a zip archive whose entry {key!r} is not a .npy array; expected an .npz '
            'of named arrays (a PyTorch .pt/.pth checkpoint is a zip of pickles, and is not '
            'read here).')
      try:
        arrays[key] = archive[key]
      except ValueError as e:
        if 'pickle' in str(e).lower():
          raise UserInputError(
              f'{path}: entry {key!r} holds pickled Python objects; only plain numeric '
              'arrays are read (allow_pickle=False), since unpickling can run arbitrary '
              'code.') from None
        raise UserInputError(f'{path}: entry {key!r} is unreadable ({e}).') from None
      except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise UserInputError(f'{path}: entry {key!r} is truncated or corrupt ({e}).') from None
  return arrays


def _head(readable, size: int = 16) -> bytes:
  """The first `size` bytes of a local path or an in-memory file."""
  if isinstance(readable, std_io.BytesIO):
    return readable.getvalue()[:size]
  with open(readable, 'rb') as f:
    return f.read(size)


def save_flat(path: str | os.PathLike, flat: Mapping[str, Any], *,
              overwrite: bool = False) -> None:
  """Writes arrays under their flat names, atomically (never a half-written file)."""
  arrays = {k: np.asarray(v) for k, v in flat.items()}
  for key, value in arrays.items():
    if value.dtype == object:
      raise UserInputError(f'{key!r}: cannot store Python objects, only numeric arrays.')
  with io.atomic_write(path, 'wb', overwrite=overwrite) as f:
    np.savez(f, **arrays)


def shape_mismatches(found: Tree, expected: Tree) -> list[str]:
  """Lists every key that is missing, extra, or of another shape, as readable lines."""
  found_flat = {k: np.shape(v) for k, v in flatten(found).items()}
  expected_flat = {k: np.shape(v) for k, v in flatten(expected).items()}
  lines = []
  for key in sorted(expected_flat.keys() | found_flat.keys()):
    if key not in found_flat:
      lines.append(f'  missing  {key}: expected shape {expected_flat[key]}')
    elif key not in expected_flat:
      lines.append(f'  extra    {key}: shape {found_flat[key]} is not in the model')
    elif found_flat[key] != expected_flat[key]:
      lines.append(f'  shape    {key}: expected {expected_flat[key]}, found {found_flat[key]}')
  return lines


def check_matches(found: Tree, expected: Tree, *, source: str) -> None:
  """Raises `UserInputError` listing every mismatched key if the trees differ in structure."""
  lines = shape_mismatches(found, expected)
  if lines:
    more = (f'\n  ... and {len(lines) - MAX_LISTED} more' if len(lines) > MAX_LISTED else '')
    hint = ('\nMost keys differ: is this file for another model (size, patch or classifier)?'
            if len(lines) > len(flatten(expected)) // 2 else '')
    raise UserInputError(
        f'{source}: the parameters do not match the model ({len(lines)} mismatched keys):\n'
        + '\n'.join(lines[:MAX_LISTED]) + more + hint)
