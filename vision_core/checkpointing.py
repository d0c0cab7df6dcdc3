"""Orbax checkpoints of a training run: state pytree (params, optimizer state, step) and the
grain data-iterator state, in `{workdir}/checkpoints/{step}/` (a local folder or a bucket URI).

Orbax writes each checkpoint into a temporary folder and renames it when complete, so a
crash mid-save leaves the previous checkpoints intact and the half-written one invisible
(`latest_step` never returns it). The last `max_to_keep` checkpoints are kept.

Each checkpoint also records its arrays' fingerprints (`vision_core.fingerprint`), and a
restore compares the arrays it read with them: orbax's data files carry no checksum, so a
damaged byte would otherwise come back silently as a wrong weight.

  ckpt = Checkpointer(workdir / 'checkpoints', max_to_keep=3)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(abstract_state, data_iterator=it)   # resumes the data too
  ...
  ckpt.save(step, state, data_iterator=it)
  ckpt.close()                                                 # waits for async writes

`with Checkpointer(...) as ckpt:` closes it however the block ends.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

import grain.python as grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from vision_core import fingerprint, io, sharding
from vision_core.errors import UserInputError


# The item (a folder in each checkpoint) and file that hold the arrays' fingerprints.
_FINGERPRINTS = 'fingerprints'
_FINGERPRINTS_FILE = 'fingerprints.json'


def abstract_like(tree: Any) -> Any:
  """`jax.ShapeDtypeStruct`s (with the arrays' shardings) to restore `tree`'s structure into."""
  def leaf(x):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None))
  return jax.tree.map(leaf, tree)


def _layout(state: dict[str, Any]) -> tuple[int, str]:
  """What a saved grain position (its parsed JSON) only fits: its worker count and sampler
  class (checkpoints from before `GlobalBatchSampler` used grain's `IndexSampler`: they
  resume at their position, through `seek`, in the loader's own stream)."""
  return state.get('worker_count', 0), state.get('sampler', '').split('(')[0]


def _check_same_sampler(saved_state: dict[str, Any], current_state: dict[str, Any], *,
                        where: str) -> None:
  """grain restores a position only into the sampler that made it; its own error, raised
  from inside the restore, would read as a model mismatch. Say what differs instead."""
  saved, current = saved_state.get('sampler'), current_state.get('sampler')
  if saved != current:
    raise UserInputError(
        f'{where}: the checkpoint\'s data position was saved by another input pipeline (the '
        'batch size, seed, dataset size or number of workers differs):\n'
        f'  checkpoint: {saved}\n  this run:   {current}\n'
        'Resume with the settings of the checkpoint, or start a new workdir.')


def _root_cause(error: BaseException) -> str:
  """`Type: first line` of the error at the root of `error`'s chain (orbax wraps the reader's
  error, which names the array and the file, in a bare Exception), at most 300 characters."""
  while error.__cause__ is not None:
    error = error.__cause__
  line = str(error).strip().split('\n')[0]
  return (f'{type(error).__name__}: {line}' if line else type(error).__name__)[:300]


def _quiet_orbax_reads() -> None:
  """After one array of a checkpoint failed to read, orbax's other reads, still in flight,
  fail as they are collected and Python prints each one ("Exception ignored in: <coroutine
  object _read_array_index_and_device_put ...>": hundreds of lines under our one-line error).
  Those and only those are dropped from then on."""
  previous = sys.unraisablehook

  def hook(unraisable):
    if getattr(unraisable.object, '__qualname__', '').startswith('_read_array_index'):
      return
    previous(unraisable)
  sys.unraisablehook = hook


def _dtypes_by_path(tree: Any) -> dict[str, str]:
  """`{'params/Transformer/cls': 'float32', ...}` for the array leaves of `tree`."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {sharding.path_str(path): str(leaf.dtype) for path, leaf in leaves
          if hasattr(leaf, 'shape') and hasattr(leaf, 'dtype')}


def _fingerprint_record(tree: Any) -> dict[str, dict[str, str]]:
  """`{'params/Transformer/cls': {'dtype': 'float32', 'fingerprint': '3f2a...'}, ...}` for the
  array leaves of `tree`: what a checkpoint records, and what a restore compares with it."""
  dtypes = _dtypes_by_path(tree)
  return {path: {'dtype': dtypes[path], 'fingerprint': value}
          for path, value in fingerprint.fingerprints(tree).items()}


def _shapes_by_path(tree: Any) -> dict[str, tuple[int, ...]]:
  """`{'params/Transformer/cls': (1, 1, 768), ...}` for the array leaves of `tree` (a state, its
  abstract form or orbax's metadata of it: named tuples there become dicts, so keys are named
  alike)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {sharding.path_str(path): tuple(leaf.shape) for path, leaf in leaves
          if hasattr(leaf, 'shape')}


class Checkpointer:
  """Keeps the last `max_to_keep` checkpoints of a run in `directory`.

  Args:
    directory: the checkpoint folder (created on first save).
    max_to_keep: older checkpoints are deleted once a newer one is complete.
    async_save: write in a background thread while training continues; `close()` (or
      `wait()`) blocks until every started save is on disk.
  """

  def __init__(self, directory: str | os.PathLike, *, max_to_keep: int = 3,
               async_save: bool = True):
    # A bucket URI (gs://...) is passed to orbax as is: orbax writes there through
    # etils.epath itself; os.path.abspath would turn `gs://b/x` into `{cwd}/gs:/b/x`.
    self.directory = io.abspath(directory)
    # create=False: orbax makes the folder (and its parents) at the first save, not here, so
    # that a run refused before it saves anything leaves no empty folder behind.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=False, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={'state': ocp.StandardCheckpointHandler(),
                       'data': grain.PyGrainCheckpointHandler(),
                       _FINGERPRINTS: ocp.JsonCheckpointHandler(filename=_FINGERPRINTS_FILE)})

  def latest_step(self) -> int | None:
    """The newest complete checkpoint's step, or None."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, *, data_iterator: Any = None) -> None:
    """Saves `state` (a pytree of arrays) and the iterator's position as checkpoint `step`."""
    record = {'format': fingerprint.FORMAT, 'arrays': _fingerprint_record(state)}
    items = {'state': ocp.args.StandardSave(state), _FINGERPRINTS: ocp.args.JsonSave(record)}
    if data_iterator is not None:
      items['data'] = grain.PyGrainCheckpointSave(data_iterator)
    self._manager.save(int(step), args=ocp.args.Composite(**items), force=True)

  def restore(self, abstract_state: Any, *, data_iterator: Any = None,
              step: int | None = None,
              seek_data: Callable[[int], None] | None = None) -> Any:
    """Restores the state (placed as `abstract_state`'s shardings say) and, when given, moves
    `data_iterator` to where it was at `step` (default: the latest).

    grain saves the data position per process and per grain worker. When the checkpoint was
    written by another number of processes or of workers (or with grain's `IndexSampler`),
    `seek_data(step)` is called to position the iterator instead (see
    `vision_core.data.seek`); without it that is an error.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserInputError(f'{self.directory}: no checkpoint to restore.')
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    seek = False  # position the data with `seek_data` instead of grain's saved state
    data_dir = io.join(self.directory, str(step), 'data')
    if data_iterator is not None and io.isdir(data_dir):
      # grain saves one position per process (`process_{i}-of-{n}.json`).
      name = f'process_{jax.process_index()}-of-{jax.process_count()}.json'
      saved = io.join(data_dir, name)
      try:
        saved_state = json.loads(io.read_bytes(saved)) if io.exists(saved) else None
      except ValueError as e:
        raise self._damaged(step, f'{name}: {e}') from None
      current_state = json.loads(data_iterator.get_state())
      if saved_state is not None and (seek_data is None or _layout(saved_state) ==
                                      _layout(current_state)):
        _check_same_sampler(saved_state, current_state, where=f'{self.directory}/{step}')
        items['data'] = grain.PyGrainCheckpointRestore(data_iterator)
      elif seek_data is None:
        raise UserInputError(
            f'{self.directory}/{step}: no data position for process {jax.process_index()} of '
            f'{jax.process_count()} ({name}); the checkpoint was written by a run with another '
            'number of processes. Resume with that number (the data position is saved per '
            'process), or start a new workdir.')
      else:
        seek = True
    self._check_shapes(step, abstract_state)
    state = self._restore(step, items)['state']
    self._check_fingerprints(step, state)
    if seek:
      seek_data(step)
    return state

  def restore_part(self, key: str, abstract: Any, *, step: int | None = None) -> Any:
    """Only `state[key]` of checkpoint `step` (default: the latest), e.g. the parameters for
    an evaluation, placed as `abstract` says. The rest (the optimizer state) is not read, so
    it need not match this run's optimizer, and takes no memory."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserInputError(f'{self.directory}: no checkpoint to restore.')
    item = {key: abstract}
    self._check_shapes(step, item, partial=True)
    # The state item's own handler (StandardCheckpointHandler) restores whole trees only.
    handler = ocp.PyTreeCheckpointHandler()
    try:
      restored = handler.restore(
          epath.Path(io.join(self.directory, str(step), 'state')),
          args=ocp.args.PyTreeRestore(
              item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
              partial_restore=True))
    except Exception as e:  # pylint: disable=broad-except
      # Paths and shapes were checked above: what fails now is reading the files.
      _quiet_orbax_reads()
      raise self._damaged(step, _root_cause(e)) from None
    finally:
      handler.close()
    self._check_fingerprints(step, restored)
    return restored[key]

  def _check_fingerprints(self, step: int, restored: Any) -> None:
    """Refuses arrays that read back other bits than were saved. Checkpoints from before
    fingerprints were recorded, and arrays restored into another dtype, are not compared."""
    path = io.join(self.directory, str(step), _FINGERPRINTS, _FINGERPRINTS_FILE)
    if not io.exists(path):
      return
    try:
      record = json.loads(io.read_bytes(path))
      if record.get('format') != fingerprint.FORMAT:
        return  # written by another version of the formula: nothing to compare with
      saved = {name: (entry['dtype'], entry['fingerprint'])
               for name, entry in record['arrays'].items()}
    except (ValueError, KeyError, TypeError, AttributeError) as e:
      raise self._damaged(step, f'{_FINGERPRINTS}/{_FINGERPRINTS_FILE} cannot be read: '
                          f'{type(e).__name__}: {e}') from None
    differ = [name for name, entry in _fingerprint_record(restored).items()
              if name in saved and saved[name][0] == entry['dtype']
              and saved[name][1] != entry['fingerprint']]
    if differ:
      more = f', ... and {len(differ) - 4} more' if len(differ) > 4 else ''
      raise self._damaged(step, f'{len(differ)} of its arrays read back other values than '
                          f'were saved: {", ".join(differ[:4])}{more}')

  def _check_shapes(self, step: int, abstract_state: Any, *, partial: bool = False) -> None:
    """Refuses a checkpoint whose arrays have other shapes than `abstract_state`'s, naming
    them. Orbax would stop at the first such array with a message that names none, and its
    reads of the others, still in flight, then print thousands of lines of tracebacks."""
    if not io.isdir(io.join(self.directory, str(step), 'state')):
      raise self._damaged(step, 'its state/ folder is missing')
    try:
      stored = self._manager.item_metadata(step)['state']
    except Exception as e:  # pylint: disable=broad-except
      raise self._damaged(step, 'its metadata cannot be read: ' + _root_cause(e)) from None
    stored = _shapes_by_path(getattr(stored, 'tree', stored))
    wanted = _shapes_by_path(abstract_state)
    missing = [f'  {path}: not in the checkpoint' for path in wanted if path not in stored]
    reshaped = [f'  {path}: checkpoint {stored[path]}, this run {shape}'
                for path, shape in wanted.items() if path in stored and stored[path] != shape]
    # A whole state must be all the checkpoint holds; a part (restore_part) only be in it.
    extra = [] if partial else [f'  {path}: in the checkpoint, not in this run'
                                for path in stored if path not in wanted]
    differ = missing + reshaped + extra
    if differ:
      more = f'\n  ... and {len(differ) - 8} more' if len(differ) > 8 else ''
      raise UserInputError(
          f'{self.directory}/{step}: the checkpoint does not match this run\'s model or '
          f'optimizer; its arrays differ ({len(differ)}):\n' + '\n'.join(differ[:8]) +
          f'{more}\nUse a new workdir or the same config.')

  def _damaged(self, step: int, reason: str) -> UserInputError:
    """The error for a checkpoint that matches this run but cannot be read (a crash or a
    full disk while it was copied, a file deleted): the way back to the one before it."""
    earlier = [s for s in self.all_steps() if s < step]
    then = (f'the run then uses step {earlier[-1]}, the one before' if earlier else
            'there is no earlier checkpoint')
    return UserInputError(
        f'{self.directory}/{step}: this checkpoint cannot be read; it looks damaged ({reason}). '
        f'Move it out of the checkpoint folder (e.g. mv {self.directory}/{step} '
        f'{self.directory}-{step}.damaged) and run again: {then}.')

  def _restore(self, step: int, items: dict[str, Any]) -> Any:
    try:
      return self._manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:  # pylint: disable=broad-except
      # _check_shapes has compared every path and shape with the checkpoint's metadata: what
      # fails now is reading the arrays (orbax raises a bare Exception around the cause).
      _quiet_orbax_reads()
      raise self._damaged(step, _root_cause(e)) from None

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()  # also on an error: its saves are finished and its threads stopped
