"""The trainers' command line: `--config FILE:ARG --workdir DIR [--config.FIELD=VALUE ...]`.

`vit_jax.main`, `igpt_jax.main` and `gan_jax.main` read ml-collections config files through
absl flags. absl reports a misspelt override, a config file that rejects its argument or a
missing file with a traceback of its loader; `run` parses the flags first and turns each into
one line: the list of valid fields (with the closest matches), the config file's own
complaint, or the missing path.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Any, Callable, Iterator

from absl import app, flags, logging

from vision_core.errors import UserInputError, cli_errors


def field_items(config, prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted name, value) of every leaf field of a ConfigDict or nested dict:
  ('pp.crop', 224), ('batch', 512), ..."""
  for key, value in config.items():
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      yield from field_items(value, name + '.')
    else:
      yield name, value


def field_paths(config) -> Iterator[str]:
  """Dotted names of every leaf field of a ConfigDict: 'pp.crop', 'batch', ..."""
  return (name for name, _ in field_items(config))


def check_overrides(argv: list[str], config) -> None:
  """Fails with the list of valid fields if a `--config.X=...` names no field of `config`."""
  valid = sorted(field_paths(config))
  for arg in argv:
    if arg.startswith('--config.'):
      field = arg[len('--config.'):].split('=', 1)[0]
      if field not in valid and not any(v.startswith(field + '.') for v in valid):
        close = difflib.get_close_matches(field, valid, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise UserInputError(f'--config.{field}: no such config field.{hint} Valid fields: '
                             f'{", ".join(valid)}.')


def config_spec(argv: list[str]) -> str | None:
  """The `FILE:ARG` of `--config FILE:ARG` (or `--config=FILE:ARG`) in `argv`, if any."""
  spec = None
  for i, arg in enumerate(argv):
    if arg == '--config' and i + 1 < len(argv):
      spec = argv[i + 1]
    elif arg.startswith('--config='):
      spec = arg.split('=', 1)[1]
  return spec


def config_without_overrides(argv: list[str]) -> Any:
  """Loads the `--config FILE:ARG` named in `argv` as written, without any overrides."""
  spec = config_spec(argv)
  if not spec:
    return None
  path, _, config_arg = spec.partition(':')
  module_spec = importlib.util.spec_from_file_location('_user_config', path)
  if module_spec is None:
    return None
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(config_arg) if config_arg else module.get_config()


def parse_flags(argv: list[str], *, example: str) -> None:
  """Parses `argv` into absl's flags; a bad command line is a one-line `UserInputError`.

  `example` is a valid `FILE:ARG` for the message about a missing config file.
  """
  spec = config_spec(argv[1:])
  config_path = spec.partition(':')[0] if spec else None
  if config_path and not os.path.isfile(config_path):
    # ml_collections would only fail later, with a traceback of its loader.
    raise UserInputError(f'--config {spec}: no such config file {config_path} (e.g. '
                         f'{example}).')
  app.define_help_flags()  # --help: the module's docstring and flags, as app.run would.
  try:
    flags.FLAGS(argv)
  except (flags.Error, KeyError, AttributeError, ValueError, TypeError) as e:
    try:
      config = config_without_overrides(argv[1:])
    except UserInputError:
      raise
    except (ValueError, OSError) as config_error:
      # The config file's own complaint (a missing dataset in `FILE:ARG`, a bad size),
      # rather than absl's message with a traceback of the config loader.
      raise UserInputError(f'--config: {config_error}') from None
    except Exception:  # pylint: disable=broad-except
      config = None
    if config is not None:
      check_overrides(argv[1:], config)
    raise UserInputError(f'bad command line: {e}') from None


def run(main: Callable[[list[str]], Any], *, prog: str, example: str) -> None:
  """`app.run(main)` after `parse_flags(sys.argv)`, every `UserInputError` one line."""
  with cli_errors(prog):
    parse_flags(sys.argv, example=example)
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO.
    app.run(main, argv=[sys.argv[0]], flags_parser=lambda argv: argv)
