"""PyTorch weight files (`.pth`, HF's `pytorch_model.bin`) read as numpy, never unpickled freely.

`torch.load(..., weights_only=True)` only rebuilds tensors, containers and the classes named
in `safe_globals`, so a file cannot run code on load. torch is the optional `torch` extra
(`pip install 'jax-vision-toolkit[torch]'`, the 2.13.0 CPU wheel): only the importers of
PyTorch files need it (FID Inception, pytorch_GAN_zoo, HF ImageGPT `.bin` saves).
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import numpy as np

from vision_core.errors import UserInputError


def read(path: str | os.PathLike, *, safe_globals: Sequence[tuple[type, str]] = (),
         hint: str = '') -> Any:
  """The object stored in `path`, tensors as numpy arrays (bfloat16 as float32: numpy has no
  bfloat16). `safe_globals`: `(class, 'module.Name')` pairs the file may hold besides
  tensors (e.g. a training config object); their instances come back as dicts of their
  attributes. `hint` ends the message when torch is not installed (e.g. how to convert the
  file elsewhere)."""
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such weights file.')
  with open(path, 'rb') as f:
    head = f.read(16)
  # torch.save writes a zip (PK..), older versions a pickle (protocol >= 2: 0x80). Anything
  # else (a text file, an HTML error page) made torch say only "KeyError: 101".
  if not head.startswith((b'PK', b'\x80')):
    start = f'it starts with {head!r}' if head else 'it is empty'
    raise UserInputError(f'{path}: not a PyTorch file ({start}); expected one written by '
                         'torch.save (.pt, .pth, .bin).')
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise UserInputError(
        f'{path}: reading a PyTorch file needs torch; install the extra: '
        f"pip install 'jax-vision-toolkit[torch]' (torch==2.13.0 CPU).{hint}") from None
  try:
    with torch.serialization.safe_globals(list(safe_globals)):
      obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError ...
    raise UserInputError(_load_error_message(path, e)) from None
  classes = tuple(cls for cls, _ in safe_globals)

  def to_numpy(x):
    if isinstance(x, torch.Tensor):
      x = x.detach().cpu()
      return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    if classes and isinstance(x, classes):
      return {k: to_numpy(v) for k, v in vars(x).items()}
    if isinstance(x, Mapping):
      return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
      return type(x)(to_numpy(v) for v in x)
    return x
  return to_numpy(obj)


_ANSI_ESCAPE = re.compile(r'\x1b\[[0-9;]*[A-Za-z]')


def _load_error_message(path: str, error: Exception) -> str:
  """One line for `torch.load`'s error. Its refusal of a pickled object is many lines, with
  terminal escapes and the advice to turn weights_only off (that is: to run the file's
  code), and names the culprit only in a later line, which is kept here."""
  text = _ANSI_ESCAPE.sub('', str(error))
  if 'WeightsUnpickler error' in text or 'Weights only load failed' in text:
    # "Unsupported global: GLOBAL m.Name was not an allowed global ...", or for a module
    # torch blocks outright (os, subprocess ...) "unsupported GLOBAL posix.mkdir whose ...".
    culprit = re.search(r'GLOBAL ([\w.]+)', text)
    detail = re.search(r'WeightsUnpickler error: ([^\n]*)', text)
    found = (f'Unsupported global: GLOBAL {culprit.group(1)}' if culprit
             else detail.group(1).strip() if detail else '')
    found = f' ({found})' if found else ''
    return (f'{path}: holds Python objects other than tensors{found}, which cannot be loaded '
            'without running code from the file; only tensors and plain containers are read.')
  first_line = next((line.strip() for line in text.splitlines() if line.strip()), '')
  first_line = f': {first_line}' if first_line else ''
  return (f'{path}: not a readable weights-only PyTorch file '
          f'({type(error).__name__}{first_line}).')


def read_state_dict(path: str | os.PathLike, *, hint: str = '') -> dict[str, np.ndarray]:
  """The `{name: array}` state dict in `path` (a bare one, or under a `'state_dict'` key as
  training scripts often save it); entries that are not tensors are dropped."""
  state = read(path, hint=hint)
  if isinstance(state, Mapping) and isinstance(state.get('state_dict'), Mapping):
    state = state['state_dict']
  if not isinstance(state, Mapping):
    raise UserInputError(f'{os.fspath(path)}: expected a state dict (name -> tensor), got '
                         f'{type(state).__name__}.')
  return {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
