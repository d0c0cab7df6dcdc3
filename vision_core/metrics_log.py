"""What a user sees of a run: a tqdm progress bar, `metrics.jsonl` and TensorBoard scalars in
the workdir, and a final JSON. Only process 0 writes; other processes get no-ops.

  log = MetricsLog(workdir, resume_step=restored_step)  # -1 when no checkpoint was restored
  log.write(step, {'loss': 0.3, 'lr': 1e-3}, split='train')   # JSONL row + TB `train/loss`
  bar = Progress(total_steps=1000, initial_step=0, images_per_step=512)
  bar.update(step, loss=0.3, lr=1e-3)                            # step, img/s, loss, lr, ETA
  write_json(workdir / 'final.json', {...})                      # atomic
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np

from vision_core import io
from vision_core import tfevents


def _python_scalar(value: Any) -> Any:
  """A numpy / jax scalar as a Python number; anything else unchanged."""
  return value.item() if hasattr(value, 'item') and np.ndim(value) == 0 else value


def _plain(value: Any) -> Any:
  """numpy / jax scalars -> Python numbers (non-finite ones as strings JSON can hold)."""
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(v) for v in value]
  value = _python_scalar(value)
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return value


def write_json(path: str | os.PathLike, obj: Mapping[str, Any], *,
               overwrite: bool = True) -> None:
  """Writes `obj` as indented JSON, atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  with io.atomic_write(path, 'w', overwrite=overwrite) as f:
    json.dump(_plain(obj), f, indent=2)
    f.write('\n')


class MetricsLog:
  """Appends `{"step", "split", "time", **metrics}` rows to `{workdir}/metrics.jsonl` and the
  same scalars as `{split}/{name}` to TensorBoard event files in `{workdir}/tensorboard`.

  `workdir` may be a bucket URI (`gs://...`): both files are then rewritten whole at most
  every `upload_every_s` seconds and on `close()` (see `vision_core.io.AppendFile`).

  `resume_step`: the step a trainer restored its checkpoint at, -1 when it starts without
  one. A run that died after its last checkpoint logged steps that the resumed run computes
  and logs again; without this the log would hold two rows per step, two curves on top of
  each other. The rows of later steps move to `metrics.superseded.jsonl` (kept, not
  deleted), and TensorBoard is told to drop its events of those steps (a SessionLog START
  event, as `SummaryWriter(purge_step=...)` writes). None (the default): only appended to.

  `write(..., once=True)` skips a row whose step and split are already logged (kept at the
  resume, or written by this log): a run that stopped after logging its last step's
  evaluation but before final.json evaluates that step again to finish, with no second row.
  `logged(step, split)` returns such a row's metrics (that run's last training metrics).
  """

  SUPERSEDED = 'metrics.superseded.jsonl'

  def __init__(self, workdir: str | os.PathLike, *, tensorboard: bool = True,
               upload_every_s: float = 10.0, resume_step: int | None = None):
    self.enabled = jax.process_index() == 0
    self.path = io.join(workdir, 'metrics.jsonl')
    self._events = None
    self._file = None
    # The metrics of the rows kept at a resume and of those written, by (step, split).
    self._logged: dict[tuple[int, str], dict[str, Any]] = {}
    # Every process reads the rows, so that `logged` (a finished run's last metrics) is the
    # same on all of them; process 0 alone rewrites the files.
    rows = self._split_rows(int(resume_step)) if resume_step is not None else None
    if self.enabled:
      io.makedirs(workdir)
      if rows is not None:
        self._set_aside(*rows, workdir)
      self._file = io.AppendFile(self.path, upload_every_s=upload_every_s)
      if tensorboard:
        self._events = tfevents.EventWriter(io.join(workdir, 'tensorboard'),
                                            upload_every_s=upload_every_s)
        if resume_step is not None:
          self._events.purge_from(int(resume_step) + 1)

  def _split_rows(self, step: int) -> tuple[list[str], list[str]]:
    """metrics.jsonl's lines up to `step` and after it; the former's metrics go to
    `self._logged`."""
    if not io.exists(self.path):
      return [], []
    lines = io.read_bytes(self.path).decode('utf-8').splitlines(keepends=True)
    keep, later = [], []
    for line in lines:
      if not line.strip():
        continue
      try:
        row = json.loads(line)
        row_step = int(row['step'])
      except (ValueError, KeyError, TypeError):
        row_step = None  # A row cut off by the crash (or not ours): set aside with the rest.
      if row_step is None or row_step > step:
        later.append(line)
      else:
        keep.append(line)
        self._logged[row_step, str(row.get('split', 'train'))] = {
            k: v for k, v in row.items() if k not in ('step', 'split', 'time')}
    return keep, later

  def _set_aside(self, keep: list[str], later: list[str], workdir) -> None:
    """Moves the `later` lines to metrics.superseded.jsonl, leaving `keep` in metrics.jsonl."""
    if not later:
      return
    # The superseded rows are saved before they leave metrics.jsonl: a crash in between
    # leaves them in both files, never in neither.
    aside = io.join(workdir, self.SUPERSEDED)
    before = io.read_bytes(aside).decode('utf-8') if io.exists(aside) else ''
    if before and not before.endswith('\n'):
      before += '\n'
    with io.atomic_write(aside, 'w', overwrite=True) as f:
      f.write(before + ''.join(line if line.endswith('\n') else line + '\n'
                               for line in later))
    with io.atomic_write(self.path, 'w', overwrite=True) as f:
      f.write(''.join(keep))

  def write(self, step: int, metrics: Mapping[str, Any], *, split: str = 'train',
            once: bool = False) -> None:
    """Appends the row (process 0); with `once`, not if that step and split are logged."""
    if once and (int(step), split) in self._logged:
      return
    values = {k: _plain(v) for k, v in metrics.items()}
    self._logged[int(step), split] = values  # on every process, for `logged`
    if not self.enabled:
      return
    row = {'step': int(step), 'split': split, 'time': round(time.time(), 3), **values}
    self._file.append((json.dumps(row) + '\n').encode('utf-8'))
    if self._events is not None:
      # From the values themselves, not the JSON row: a NaN or inf loss (a diverged run) is
      # a number TensorBoard shows, where the row holds it as the string 'nan'.
      scalars = {k: _python_scalar(v) for k, v in metrics.items()}
      numbers = {f'{split}/{k}': v for k, v in scalars.items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)}
      self._events.scalars(step, numbers)

  def logged(self, step: int, split: str = 'train') -> dict[str, Any] | None:
    """The metrics of the row of `step` and `split` kept at the resume or written by this
    log (as metrics.jsonl holds them), else None; the same on every process (the others read
    the file process 0 wrote, where they can reach it)."""
    return self._logged.get((int(step), split))

  def flush(self) -> None:
    """Local files are flushed on every write; a bucket's objects are uploaded now."""
    if self._file is not None:
      self._file.flush()
    if self._events is not None:
      self._events.flush()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._events is not None:
      self._events.close()


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The rows of a metrics.jsonl file (a local path or a URI)."""
  text = io.read_bytes(path).decode('utf-8')
  return [json.loads(line) for line in text.splitlines() if line.strip()]


class Progress:
  """A tqdm bar over steps showing img/s, loss and lr; tqdm gives the ETA."""

  def __init__(self, *, total_steps: int, initial_step: int = 0, images_per_step: int,
               desc: str = 'train', disable: bool | None = None):
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    if disable is None:
      disable = jax.process_index() != 0
    self._bar = tqdm(total=total_steps, initial=initial_step, desc=desc, unit='step',
                     dynamic_ncols=True, mininterval=1.0, disable=disable, file=sys.stderr)
    self._images_per_step = images_per_step
    self._quiet = jax.process_index() != 0  # one copy of each line, not one per host
    self._last = (initial_step, time.perf_counter())
    self.images_per_second = float('nan')

  def update(self, step: int, **values: float) -> None:
    """Moves the bar to `step` and shows `values` (e.g. loss, lr) and the measured img/s."""
    last_step, last_time = self._last
    now = time.perf_counter()
    if step > last_step and now > last_time:
      self.images_per_second = (step - last_step) * self._images_per_step / (now - last_time)
    self._last = (step, now)
    postfix = {'img/s': f'{self.images_per_second:.0f}'}
    postfix.update({k: f'{float(v):.4g}' for k, v in values.items()})
    self._bar.set_postfix(postfix, refresh=False)
    self._bar.update(step - self._bar.n)

  def restart_timer(self) -> None:
    """Starts the next img/s measurement now (call after an eval, so it does not count)."""
    self._last = (self._last[0], time.perf_counter())

  def write(self, line: str) -> None:
    """Prints a line (e.g. an eval result) above the bar; on process 0 only."""
    if not self._quiet:
      self._bar.write(line, file=sys.stderr)

  def close(self) -> None:
    self._bar.close()
