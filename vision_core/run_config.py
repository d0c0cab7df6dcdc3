"""The config a training run used, kept as `config.json` in its workdir.

A resumed run compares its config with the one saved there, so that a checkpoint that no
longer fits (another model width, image size, class count) is reported together with the
fields that changed, and a deliberate change that still fits (a new learning rate) is said
once in the log instead of passing unnoticed.

  state = run_config.resume(ckpt, state, config, workdir, data_iterator=it,
                           global_batch_size=config.batch_size)  # names changed fields
  run_config.write(config, workdir)         # after the checkpoint was restored

`finished` tells a trainer that the workdir's run is already complete, so that running the
same command again returns its `final.json` instead of evaluating and logging it again.

`check_fields` refuses numeric fields out of their range with one message per field, the
same wording in every trainer:

  run_config.check_fields(config, [('total_steps', '> 0'), ('eval_every', '>= 0', ZERO_LAST)])
"""

from __future__ import annotations

import json
import logging
import os

import jax

from vision_core import checkpointing, config_cli, io
from vision_core.errors import UserInputError

FILE = 'config.json'

# The ranges `check_fields` knows, by the words its messages use for them.
RANGES = {
    '> 0': lambda v: v > 0,
    '>= 0': lambda v: v >= 0,
    'in [0, 1)': lambda v: 0 <= v < 1,
    'in (0, 1]': lambda v: 0 < v <= 1,
}
# The note for a period of steps whose 0 means "only after the last step" (`loop.Every`).
ZERO_LAST = '0: only at the last step'


def check_fields(config, rules, *, prefix: str = '') -> None:
  """Raises `UserInputError` for the first field of `rules` out of its range, e.g.
  'total_steps=0: expected > 0.' (vit's wording), before a trainer does any work.

  `rules`: `(field, range)` or `(field, range, note)`; `field` may be dotted
  ('generator.width'), `range` is a key of `RANGES`, `note` is added in parentheses. NaN is
  in no range. `prefix` goes before the field name ('config.' in gan's messages). A field
  the config lacks is skipped: the trainers read their optional ones with `config.get`.
  """
  for field, expected, *note in rules:
    value = config
    for part in field.split('.'):
      value = value.get(part) if value is not None else None
    if value is not None and not RANGES[expected](value):
      note = f' ({note[0]})' if note else ''
      raise UserInputError(f'{prefix}{field}={value}: expected {expected}{note}.')


def _saved(workdir: str | os.PathLike):
  """The workdir's config.json as parsed JSON; None where it is absent.

  One that is not JSON is refused: we write it atomically, so it was damaged or edited, and
  replacing it would skip, unsaid, the checks of this run against the workdir's.
  """
  path = io.join(workdir, FILE)
  if not io.exists(path):
    return None
  try:
    saved = json.loads(io.read_bytes(path))
  except ValueError as e:
    saved = e
  if not isinstance(saved, dict):
    raise UserInputError(
        f'{path}: not a config saved by a run ({saved}); this workdir\'s record of its run is '
        'damaged. Restore it, or move it aside to have this run write its own.')
  return saved


def changed_fields(config, workdir: str | os.PathLike, *,
                   ignore: tuple[str, ...] = ('mode',)) -> list[str]:
  """'name old -> new' for every leaf field that differs from the workdir's config.json.

  Empty when there is no config.json. `mode` is left out: an evaluate run of a training
  workdir differs in it by design.
  """
  saved = _saved(workdir)
  if saved is None:
    return []
  before = dict(config_cli.field_items(saved))
  now = dict(config_cli.field_items(json.loads(config.to_json())))  # as config.json holds it
  return [f'{k} {before.get(k)!r} -> {now.get(k)!r}' for k in sorted(before.keys() | now)
          if before.get(k) != now.get(k) and k not in ignore]


def describe_changes(config, workdir: str | os.PathLike) -> str:
  """' Config fields changed since the last run in this workdir (...): ...' or ''."""
  changed = changed_fields(config, workdir)
  if not changed:
    return ''
  return (f' Config fields changed since the last run in this workdir '
          f'({io.join(workdir, FILE)}): {"; ".join(changed)}.')


def log_changes(config, workdir: str | os.PathLike) -> list[str]:
  """Logs (a warning, process 0) the fields a resumed run changed; returns them.

  Not `total_steps`: raising it is how a finished run is extended.
  """
  changed = changed_fields(config, workdir, ignore=('mode', 'total_steps'))
  if changed and jax.process_index() == 0:
    logging.warning('Resuming %s with config fields changed since its last run: %s',
                    workdir, '; '.join(changed))
  return changed


def resume(ckpt, state, config, workdir: str | os.PathLike, *, data_iterator,
           global_batch_size: int):
  """`state` restored from `ckpt`'s latest checkpoint, the data iterator moved to its step.

  A checkpoint that no longer fits is reported together with the config fields changed
  since the last run; a resume that fits but changed fields logs them (`log_changes`).
  """
  from vision_core import data  # pylint: disable=g-import-not-at-top
  try:
    state = ckpt.restore(
        checkpointing.abstract_like(state), data_iterator=data_iterator,
        seek_data=lambda step: data.seek(data_iterator, batches=step,
                                         global_batch_size=global_batch_size))
  except UserInputError as e:
    raise UserInputError(f'{e}{describe_changes(config, workdir)}') from None
  log_changes(config, workdir)
  return state


def write(config, workdir: str | os.PathLike) -> None:
  """Saves `config` as the workdir's config.json, atomically (process 0 only)."""
  if jax.process_index() == 0:
    with io.atomic_write(io.join(workdir, FILE), 'w', overwrite=True) as f:
      f.write(config.to_json(indent=2))


def finished(config, workdir: str | os.PathLike, latest_step: int | None):
  """The workdir's final.json (a dict) when its run is complete, else None; says so and
  prints final.json (process 0).

  Complete: the latest checkpoint is at or past `config.total_steps` and final.json was
  written for that step. A raised total_steps is not complete (the run continues); a
  missing, unreadable or older final.json (a run that stopped between its last checkpoint
  and its final evaluation) neither: the trainer then does the rest.
  """
  if latest_step is None or latest_step < config.total_steps:
    return None
  path = io.join(workdir, 'final.json')
  try:
    final = json.loads(io.read_bytes(path)) if io.exists(path) else None
  except ValueError:
    return None  # written again at the end of the run
  if not isinstance(final, dict) or final.get('step') != latest_step:
    return None
  if jax.process_index() == 0:
    lower = (f' (total_steps={config.total_steps} is below it: a finished run is not '
             'shortened; use a new workdir for a shorter one)'
             if latest_step > config.total_steps else '')
    changed = changed_fields(config, workdir, ignore=('mode', 'total_steps'))
    ignored = (f' Config fields changed since it ran ({io.join(workdir, FILE)}), not applied: '
               f'{"; ".join(changed)}.' if changed else '')
    print(f'{workdir}: the run is already complete at step {latest_step}{lower}; its result '
          f'is {path}. Nothing to do: raise --config.total_steps to train further.{ignored}',
          flush=True)
    print(json.dumps(final, indent=2), flush=True)  # as the run printed it at its end
  return final


def check_same_program(config, workdir: str | os.PathLike) -> None:
  """Refuses a workdir whose config.json another trainer wrote (a ViT run's workdir given to
  the GAN trainer): resuming it failed with orbax's dump of two unrelated state trees.

  Another trainer: fewer than half of the two configs' top-level fields are shared. Runs of
  one trainer share nearly all (its configs/*.py differ in values; a field added since an
  older run is one of ~30); the three trainers share 10-26%.
  """
  saved = _saved(workdir)
  if saved is None:  # a new workdir
    return
  mine, theirs = set(config.keys()), set(saved)
  if 2 * len(mine & theirs) < len(mine | theirs):
    only = sorted(theirs - mine)
    raise UserInputError(
        f'{workdir} holds the run of another program: its {FILE} has fields this config does '
        f'not ({", ".join(only[:6])}{", ..." if len(only) > 6 else ""}); use a new workdir.')


def open_checkpoints(config, workdir: str | os.PathLike, **checkpointer_options):
  """`(ckpt, latest_step, final)`: the workdir's `checkpoints/` Checkpointer (opening it
  creates nothing), its latest step (None: a fresh run), and final.json's dict when the run
  is already complete (`finished`, which says so), in which case `ckpt` is closed and the
  trainer returns `final`; else None and the trainer goes on (and closes `ckpt`). A workdir
  whose latest checkpoint is past `total_steps` without its final.json is refused, and so
  is one of another trainer (`check_same_program`)."""
  check_same_program(config, workdir)
  ckpt = checkpointing.Checkpointer(io.join(workdir, 'checkpoints'), **checkpointer_options)
  try:
    latest = ckpt.latest_step()
    final = finished(config, workdir, latest)
    if final is None and latest is not None and latest > config.total_steps:
      # Not complete (final.json missing or older) and past the end: finishing it would
      # evaluate step `latest` and log it as step total_steps.
      raise UserInputError(
          f'total_steps={config.total_steps}: {workdir} holds a checkpoint of step {latest}, '
          f'past it, and no final.json for it; a run is not shortened: pass '
          f'--config.total_steps={latest} to finish that run, or use a new workdir.')
  except BaseException:
    ckpt.close()
    raise
  if final is not None:
    ckpt.close()
  return ckpt, latest, final
