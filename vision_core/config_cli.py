"""The trainers' command line: `--config FILE:ARG --workdir DIR [--config.FIELD=VALUE ...]`.

`vit_jax.main`, `igpt_jax.main` and `gan_jax.main` read ml-collections config files through
absl flags. absl reports a misspelt override, a config file that rejects its argument or a
missing file with a traceback of its loader; `run` parses the flags first and turns each into
one line: the list of valid fields (with the closest matches), the config file's own
complaint, or the missing path.

A shell expands `~` only at the start of a word, so `--workdir=~/runs`,
`--config=~/my.py:ARG` and `--config.dataset=~/data` arrive with a literal `~`; `parse_flags`
expands those (`vision_core.io.expand_user`) in the path flags, the config file's path and
every string field of the loaded config.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import sys
from typing import Any, Callable, Iterator

from absl import app, flags, logging

from vision_core import io
from vision_core import seeds
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
  values = dict(field_items(config))
  valid = sorted(values)
  given = set()
  for arg in argv:
    if arg.startswith('--config.'):
      field = arg[len('--config.'):].split('=', 1)[0]
      if field not in valid and not any(v.startswith(field + '.') for v in valid):
        close = difflib.get_close_matches(field, valid, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        raise UserInputError(f'--config.{field}: no such config field.{hint} Valid fields: '
                             f'{", ".join(valid)}.')
      # A repeated scalar override is taken last-wins, but ml_collections joins a repeated
      # tuple's values: --config.mesh=(1,1) --config.mesh=(2,2) gave the mesh (1, 1, 2, 2).
      if field in given and isinstance(values.get(field), (tuple, list)):
        raise UserInputError(f'--config.{field} is given twice; give a tuple field once (its '
                             'values would be joined into one tuple, not replaced).')
      given.add(field)


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


def expand_config_spec(argv: list[str]) -> list[str]:
  """`argv` with a leading `~` of the config file in `--config=FILE:ARG` expanded.

  (`--config FILE:ARG`, two words, was expanded by the shell already, unless quoted.)
  """
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config=~'):
      out[i] = '--config=' + io.expand_user(arg[len('--config='):], name='--config')
    elif arg == '--config' and i + 1 < len(out) and out[i + 1].startswith('~'):
      out[i + 1] = io.expand_user(out[i + 1], name='--config')
  return out


def expand_user_fields(config, *, comma_lists: tuple[str, ...] = (),
                       prefix: str = '') -> None:
  """Expands a leading `~` (`io.expand_user`) in every string field of `config`, in place.

  Every field whose value starts with `~` is taken for a path, whatever its name: no other
  kind of value (a model or TFDS name, a preprocessing spec, an optimizer) starts with `~`,
  and so no path field can be forgotten (dataset, tfds_data_dir, pretrained, init_from,
  palette, fid_vit_checkpoint, ...). Fields named in `comma_lists` (dotted names) hold
  comma-separated paths, each expanded. Fields without a `~` are left as they are.
  """
  for key, value in config.items():
    name = f'{prefix}{key}'
    if hasattr(value, 'items'):
      expand_user_fields(value, comma_lists=comma_lists, prefix=name + '.')
    elif isinstance(value, str) and '~' in value:
      entries = value.split(',') if name in comma_lists else [value]
      expanded = ','.join(io.expand_user(e.strip(), name=f'config.{name}')
                          if e.strip().startswith('~') else e for e in entries)
      if expanded != value:
        config[key] = expanded


def expand_user_flags(path_flags: tuple[str, ...], *,
                      comma_lists: tuple[str, ...] = ()) -> None:
  """After parsing: expands a leading `~` in the parsed string flags `path_flags` (e.g.
  `--workdir`) and in the fields of the `--config` ConfigDict (`expand_user_fields`)."""
  for name in path_flags:
    if name in flags.FLAGS and isinstance(flags.FLAGS[name].value, str):
      flags.FLAGS[name].value = io.expand_user(flags.FLAGS[name].value, name=f'--{name}')
  config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
  if hasattr(config, 'items'):
    expand_user_fields(config, comma_lists=comma_lists)


def parse_flags(argv: list[str], *, example: str,
                path_flags: tuple[str, ...] = ('workdir',),
                comma_lists: tuple[str, ...] = ()) -> None:
  """Parses `argv` into absl's flags; a bad command line is a one-line `UserInputError`.

  `example` is a valid `FILE:ARG` for the message about a missing config file. A leading `~`
  is expanded in the config file's path, in the string flags `path_flags` and in every
  string field of the config (`expand_user_flags`; `comma_lists`: fields of comma-separated
  paths).
  """
  argv = expand_config_spec(argv)
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
  expand_user_flags(path_flags, comma_lists=comma_lists)
  config = flags.FLAGS['config'].value if 'config' in flags.FLAGS else None
  if hasattr(config, 'items'):
    check_overrides(argv[1:], config)  # parsed, but a repeated tuple field was joined
  if hasattr(config, 'items') and 'seed' in config:
    # Checked before the run starts: a trainer seeds its model (and Image GPT its palette
    # fit) before the data loader, which would otherwise be the first to refuse it.
    seeds.check_seed(config.seed, field='--config.seed')


def define_run_flags(*, config_help: str, workdir_help: str):
  """The trainers' `--config FILE:ARG` (a locked config: a misspelt override is an error)
  and `--workdir DIR`, as absl FlagHolders; `run` refuses a command line without either."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  config = config_flags.DEFINE_config_file('config', None, config_help, lock_config=True)
  return config, flags.DEFINE_string('workdir', None, workdir_help)


def run(main: Callable[[list[str]], Any], *, prog: str, example: str) -> None:
  """`app.run(main)` after `parse_flags(sys.argv)`, every `UserInputError` one line; the
  flags of `define_run_flags` must be given (`example`: a valid `FILE:ARG`)."""
  with cli_errors(prog):
    parse_flags(sys.argv, example=example)
    missing = [f'--{name}' for name in ('config', 'workdir')
               if name in flags.FLAGS and flags.FLAGS[name].value is None]
    if missing:
      raise UserInputError(f'{" and ".join(missing)}: required, e.g. --config {example} '
                           '--workdir /tmp/run')
    logging.set_verbosity(logging.WARNING)  # orbax logs every save step at INFO.
    app.run(main, argv=[sys.argv[0]], flags_parser=lambda argv: argv)
