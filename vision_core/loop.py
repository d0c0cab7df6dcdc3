"""The step loop the three trainers share (`vit_jax`, `igpt_jax`, `gan_jax`).

Each trainer builds its own state, step function and periodic work (logging, evaluation,
samples, checkpoints) and hands them to `run`, which owns what they all need the same way:
the step count on resume, the order of the periodic calls, an early stop that still makes
its step the last one (logged, evaluated, checkpointed), and the metrics log flushed and
the checkpointer and progress bar closed whatever happens (a bucket's `metrics.jsonl` is
uploaded at intervals, so the rows up to a crash are kept).

  state = loop.run(state, step_fn=lambda s, step: train_step(s, next_batch()),
                   first_step=start, total_steps=config.total_steps, log=log,
                   hooks=[loop.Every(config.log_every, write_metrics),
                          loop.Every(config.checkpoint_every, save_checkpoint)],
                   close=(bar, ckpt))
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import sys
import threading
from typing import Any, Callable, Iterator, Optional, Sequence

from vision_core.errors import Stopped

# fn(step, state, metrics): state and metrics as the step function returned them.
HookFn = Callable[[int, Any, Any], None]


@dataclasses.dataclass(frozen=True)
class Every:
  """Calls `fn(step, state, metrics)` after every `steps`-th step (never when `steps` <= 0).
  The last step of the run is special: `at_last=True` calls `fn` after it whatever the
  period, `at_last=False` never does (for work the caller does after the run instead).
  `at_stop=True`: also called for the step a signal stops the run at (the checkpoint)."""
  steps: int
  fn: HookFn
  at_last: bool = True
  at_stop: bool = False

  def due(self, step: int, last: bool) -> bool:
    if last:
      return self.at_last
    return self.steps > 0 and step % self.steps == 0


class _StopSignals:
  """While active (`with stop.installed():`), the first SIGINT or SIGTERM only records a
  stop request, so the step in flight finishes and can be checkpointed; a second one
  raises KeyboardInterrupt at once. Handlers can only be set from the main thread, so
  elsewhere nothing is installed. With several JAX processes no handler is installed: a
  signal reaches one host, and all must stop at the same step. There JAX's preemption
  service (SIGTERM, `reached_preemption_sync_point`) picks that step for all hosts."""

  def __init__(self):
    self.reason: Optional[str] = None
    self.multi_process = False

  def _handle(self, signum, frame):
    del frame
    if self.reason is not None:
      raise KeyboardInterrupt
    self.reason = signal.Signals(signum).name
    print(f'\n{self.reason}: stopping after this step, with a checkpoint '
          '(send it again to stop at once).', file=sys.stderr, flush=True)

  @contextlib.contextmanager
  def installed(self) -> Iterator['_StopSignals']:
    import jax  # pylint: disable=g-import-not-at-top
    self.multi_process = jax.process_count() > 1
    signums = [signal.SIGINT, signal.SIGTERM]
    if self.multi_process or threading.current_thread() is not threading.main_thread():
      signums = []
    previous = {s: signal.signal(s, self._handle) for s in signums}
    try:
      yield self
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)

  def requested(self, step: int) -> Optional[str]:
    """Why to stop after `step` (a signal's name), or None. Call at every step."""
    if self.multi_process:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      try:
        return 'SIGTERM' if multihost_utils.reached_preemption_sync_point(step) else None
      except RuntimeError:  # the preemption service is off (jax_enable_preemption_service)
        return None
    return self.reason


def run(state: Any, *, step_fn: Callable[[Any, int], tuple[Any, Any]], first_step: int,
        total_steps: int, hooks: Sequence[Every], log: Any, close: Sequence[Any] = (),
        stop_after: Optional[Callable[[int], bool]] = None) -> Any:
  """Steps `first_step + 1 .. total_steps` of `state, metrics = step_fn(state, step)`.

  After each step the due hooks run in the order given. `stop_after(step)` true ends the run
  after that step, which then counts as the last (hooks with `at_last` run). Ctrl-C or
  SIGTERM (a preemption notice) lets the step in flight finish, runs the `at_stop` hooks
  for it (those not already run) and raises `vision_core.errors.Stopped`; a second signal
  stops at once. Whatever happens, `log.flush()` is called and every object in `close` is
  closed. Returns the state after the last step taken (`state` itself when there is
  nothing left to do).
  """
  try:
    with _StopSignals().installed() as stop:
      for step in range(first_step + 1, total_steps + 1):
        state, metrics = step_fn(state, step)
        last = step == total_steps or (stop_after is not None and stop_after(step))
        done = [hook.due(step, last) for hook in hooks]
        for hook, due in zip(hooks, done):
          if due:
            hook.fn(step, state, metrics)
        if last:
          break
        reason = stop.requested(step)
        if reason is not None:
          for hook, due in zip(hooks, done):
            if hook.at_stop and not due:
              hook.fn(step, state, metrics)
          raise Stopped(step, reason, saved=any(hook.at_stop for hook in hooks))
  finally:
    for closable in close:
      closable.close()
    log.flush()
  return state
