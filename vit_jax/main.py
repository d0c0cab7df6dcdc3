r"""Train, fine-tune or evaluate a ViT: `python -m vit_jax.main --config FILE:ARGS --workdir DIR`.

  python -m vit_jax.main --config configs/vit.py:ViT-B_16,cifar10 --workdir runs/b16 \
      --config.pretrained=ViT-B_16.npz [--config.FIELD=VALUE ...]
  python -m vit_jax.main --config configs/vit.py:ViT-B_16,cifar10 --workdir runs/b16 \
      --config.mode=evaluate

A workdir that already holds checkpoints is resumed from the latest one. See configs/vit.py.
"""

from __future__ import annotations

import difflib
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from vision_core import host_memory
from vision_core.errors import UserInputError, cli_errors

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file (configs/vit.py:MODEL,'
                                          'DATASET).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, model.')
flags.mark_flags_as_required(['config', 'workdir'])


def _field_paths(config, prefix=''):
  for key, value in config.items():
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      yield from _field_paths(value, name + '.')
    else:
      yield name


def check_overrides(argv: list[str], config) -> None:
  """Fails with the list of valid fields if a `--config.X=...` names no field."""
  valid = sorted(_field_paths(config))
  for arg in argv:
    if arg.startswith('--config.'):
      field = arg[len('--config.'):].split('=', 1)[0]
      if field not in valid and not any(v.startswith(field + '.') for v in valid):
        close = difflib.get_close_matches(field, valid, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise UserInputError(f'--config.{field}: no such config field.{hint} Valid fields: '
                             f'{", ".join(valid)}.')


def main(argv):
  del argv
  config = _CONFIG.value
  # Before JAX starts the threads whose allocator arenas it decides.
  if host_memory.keep_freed_memory_on_cpu(config.get('cpu_keep_freed_memory', True)):
    print(f'CPU run: {host_memory.SETTING} (--config.cpu_keep_freed_memory=False: off)')
  from vit_jax import train_loop  # pylint: disable=g-import-not-at-top
  logging.info('Config:\n%s', config)
  if config.mode == 'train':
    train_loop.train_and_evaluate(config, _WORKDIR.value)
  elif config.mode == 'evaluate':
    train_loop.evaluate_only(config, _WORKDIR.value)
  else:
    raise UserInputError(f'mode={config.mode!r}: expected train or evaluate.')


def _config_spec(argv: list[str]) -> str | None:
  """The `FILE:ARG` of `--config FILE:ARG` (or `--config=FILE:ARG`) in `argv`, if any."""
  spec = None
  for i, arg in enumerate(argv):
    if arg == '--config' and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith('--config='):
      spec = arg.split('=', 1)[1]
  return spec


def _config_without_overrides(argv: list[str]):
  """Loads the `--config FILE:ARG` named in `argv` as written, without any overrides."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = _config_spec(argv)
  if not spec:
    return None
  path, _, config_arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_user_config', path)
  if module_spec is None:
    return None
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(config_arg) if config_arg else module.get_config()


def run():
  with cli_errors('vit_jax.main'):
    spec = _config_spec(sys.argv[1:])
    config_path = spec.partition(':')[0] if spec else None
    if config_path and not os.path.isfile(config_path):
      # ml_collections would only fail later, with a traceback of its loader.
      raise UserInputError(f'--config {spec}: no such config file {config_path} (e.g. '
                           'configs/vit.py:ViT-B_16,cifar10).')
    app.define_help_flags()  # --help: this module's docstring and flags, as app.run would.
    try:
      flags.FLAGS(sys.argv)  # Parse first, so that a bad override gets our message.
    except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
      try:
        config = _config_without_overrides(sys.argv[1:])
      except UserInputError:
        raise
      except (ValueError, OSError) as config_error:
        # The config file's own complaint (`vit.py:testing` without a dataset, a missing
        # file), rather than absl's message with a traceback of the config loader.
        raise UserInputError(f'--config: {config_error}') from None
      except Exception:  # pylint: disable=broad-except
        config = None
      if config is not None:
        check_overrides(sys.argv[1:], config)
      raise UserInputError(f'bad command line: {e}') from None
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO.
    app.run(main, argv=[sys.argv[0]], flags_parser=lambda argv: argv)


if __name__ == '__main__':
  run()
