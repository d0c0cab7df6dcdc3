"""Reading HF transformers saves (`save_pretrained` folders): weights files and config.json.

Used by Image GPT's and the ViT's importers; what the tensors mean is theirs. Local paths
(the weights are read by safetensors and torch, which take file names).

    path = hf_io.weights_file('vit-base/')   # the file `from_pretrained` would read
    state = hf_io.read_weights(path)         # {'vit.embeddings.cls_token': array, ...}
    config = hf_io.read_config(path, 'ViTConfig')  # config.json beside it, or {}
"""

from __future__ import annotations

import importlib
import json
import os

import numpy as np

from vision_core import folders, io, torch_io
from vision_core.errors import UserInputError

SHARD_INDEX = 'model.safetensors.index.json'
# The files of an HF save, in the order `from_pretrained` prefers them: safetensors, then the
# PyTorch pickles of older saves (read with `weights_only=True`; torch is an optional extra).
WEIGHT_FILES = ('model.safetensors', SHARD_INDEX, 'pytorch_model.bin',
                'pytorch_model.bin.index.json')
# File names that are HF weights on their own (a single file, or a sharded save's index).
WEIGHT_SUFFIXES = ('.safetensors', '.bin', '.index.json')


def is_save(path: str | os.PathLike) -> bool:
  """Whether `path` names HF weights: a file with one of `WEIGHT_SUFFIXES`, or a folder
  holding one of `WEIGHT_FILES`."""
  path = os.fspath(path)
  if os.path.isdir(path):
    return any(os.path.exists(os.path.join(path, name)) for name in WEIGHT_FILES)
  return path.endswith(WEIGHT_SUFFIXES)


def weights_file(path: str | os.PathLike) -> str:
  """`path` itself, or for a folder the first of `WEIGHT_FILES` in it (as `from_pretrained`
  picks). FileNotFoundError names the path and what belongs there."""
  path = os.fspath(path)
  if os.path.isdir(path):
    found = [n for n in WEIGHT_FILES if os.path.exists(os.path.join(path, n))]
    if not found:
      raise FileNotFoundError(f'{path}: no HF weights in it (expected one of '
                              f'{", ".join(WEIGHT_FILES)}).')
    path = os.path.join(path, found[0])
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such weights file.')
  return path


def save_files(weights_path: str) -> list[str]:
  """The files that make the model of a save: the weights (each shard of a sharded save),
  then config.json and preprocessor_config.json where present (e.g. to fingerprint it)."""
  folder = os.path.dirname(weights_path)
  files = [weights_path]
  if weights_path.endswith('.json'):
    weight_map = io.read_json_object(weights_path, 'a sharded save\'s index').get('weight_map')
    files += sorted({os.path.join(folder, os.path.basename(str(shard)))
                     for shard in (weight_map or {}).values()})
  extra = [config_path(weights_path), processor_config_path(weights_path)]
  return files + [f for f in extra if os.path.isfile(f)]


def config_path(weights_path: str) -> str:
  return os.path.join(os.path.dirname(weights_path), 'config.json')


def processor_config_path(weights_path: str) -> str:
  """The image processor's config beside `weights_path` (resize, crop, mean / std)."""
  return os.path.join(os.path.dirname(weights_path), 'preprocessor_config.json')


def read_config(weights_path: str, what: str) -> dict:
  """The config.json beside `weights_path` (`what`: the config class, for errors), or {}
  when there is none."""
  path = config_path(weights_path)
  if not os.path.exists(path):
    return {}
  return io.read_json_object(path, f"HF's {what}, as save_pretrained writes it")


def check_positive_ints(config: dict, fields, *, source: str) -> None:
  """Each of `fields` present in `config` is a positive whole number, else `UserInputError`
  naming `source` (the config file) and the field."""
  for key in fields:
    value = config.get(key)
    if key in config and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
      raise UserInputError(f'{source}: {key} must be a positive integer, found {value!r}.')


def read_weights(path: str, *, hint: str = '') -> dict[str, np.ndarray]:
  """`{name: array}` of a weights file from `weights_file`: safetensors, a PyTorch `.bin`
  state dict (`hint`: what to say when torch cannot read it), or a sharded save's index."""
  if path.endswith('.json'):
    return _read_shards(path, hint=hint)
  return _read_file(path, hint=hint)


def check_export_folder(out: str, names, *, force: bool) -> None:
  """Refuses an existing non-empty `out` unless `force`, and never replaces a folder holding
  anything but an earlier export's files `names` (--force would delete them)."""
  if io.is_uri(out):
    raise UserInputError(f'--out {out}: HF saves are written to a local folder.')

  def not_ours(folder):
    others = sorted(set(os.listdir(folder)) - set(names))
    if others or not is_save(folder):
      return f'it holds {", ".join(others or sorted(os.listdir(folder)))}'
    return None
  folders.check_output_folder(out, force=force, what='an HF export of this tool', not_ours=not_ours)


def write_save(out: str, tensors: dict[str, np.ndarray], json_files: dict[str, dict], *,
               force: bool = False) -> None:
  """Writes the folder `out` as `save_pretrained` would: `model.safetensors` (`tensors`) and
  the JSON files `json_files` ({'config.json': {...}, ...}). The folder appears whole or not
  at all (staged beside it, then renamed); see `check_export_folder` for what it replaces."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  out = os.path.abspath(out)
  names = ['model.safetensors', *json_files]
  check_export_folder(out, names, force=force)
  with folders.staging_folder(out) as staging:
    save_file(tensors, os.path.join(staging, 'model.safetensors'), metadata={'format': 'pt'})
    for name, content in json_files.items():
      with open(os.path.join(staging, name), 'w', encoding='utf-8') as f:
        json.dump(content, f, indent=2)
    check_export_folder(out, names, force=force)  # (again: it may have appeared meanwhile)
    folders.publish_folder(staging, out)


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  # numpy knows bfloat16 (saves made with torch_dtype=bfloat16) once ml_dtypes, a dependency
  # of jax, is imported; without it safetensors fails with "data type 'bfloat16' not
  # understood" (as it did in a process that had not imported jax yet).
  importlib.import_module('ml_dtypes')
  from safetensors import numpy as st_numpy  # pylint: disable=g-import-not-at-top
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path}: no such safetensors file.')
  try:
    return st_numpy.load_file(path)
  except Exception as e:  # safetensors raises its own error types for corrupt headers.
    raise UserInputError(f'{path}: not a readable safetensors file ({e}).') from None


def _read_file(path: str, *, hint: str) -> dict[str, np.ndarray]:
  if path.endswith('.bin'):
    return torch_io.read_state_dict(path, hint=hint)
  return _read_safetensors(path)


def _read_shards(index_path: str, *, hint: str) -> dict[str, np.ndarray]:
  """The tensors of a sharded save (`save_pretrained` splits big models into
  `model-0000k-of-0000n.safetensors` (or `.bin`) files listed by the index)."""
  weight_map = io.read_json_object(index_path, 'a sharded save\'s index').get('weight_map')
  if not isinstance(weight_map, dict) or not weight_map:
    raise UserInputError(f'{index_path}: expected a "weight_map" of tensor names to shard '
                         'files, as transformers writes it.')
  # Plain names: a shard lies beside its index, and a downloaded index must not make us read
  # '../../x' or '/etc/x' instead.
  bad = [f'{name!r}: {shard!r}' for name, shard in weight_map.items()
         if not isinstance(shard, str) or not shard or os.path.basename(shard) != shard
         or shard in ('.', '..')]
  if bad:
    raise UserInputError(f'{index_path}: "weight_map" values must be names of shard files '
                         f'beside it, found {", ".join(bad[:3])}.')
  state = {}
  for shard in sorted(set(weight_map.values())):
    state.update(_read_file(os.path.join(os.path.dirname(index_path), shard), hint=hint))
  missing = sorted(set(weight_map) - set(state))
  if missing:
    raise UserInputError(f'{index_path}: {len(missing)} tensors listed but not in their shard '
                         f'files: {", ".join(missing[:5])}.')
  return state
