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

import dataclasses
from typing import Any, Callable, Optional, Sequence

# fn(step, state, metrics): state and metrics as the step function returned them.
HookFn = Callable[[int, Any, Any], None]


@dataclasses.dataclass(frozen=True)
class Every:
  """Calls `fn(step, state, metrics)` after every `steps`-th step (never when `steps` <= 0).
  The last step of the run is special: `at_last=True` calls `fn` after it whatever the
  period, `at_last=False` never does (for work the caller does after the run instead)."""
  steps: int
  fn: HookFn
  at_last: bool = True

  def due(self, step: int, last: bool) -> bool:
    if last:
      return self.at_last
    return self.steps > 0 and step % self.steps == 0


def run(state: Any, *, step_fn: Callable[[Any, int], tuple[Any, Any]], first_step: int,
        total_steps: int, hooks: Sequence[Every], log: Any, close: Sequence[Any] = (),
        stop_after: Optional[Callable[[int], bool]] = None) -> Any:
  """Steps `first_step + 1 .. total_steps` of `state, metrics = step_fn(state, step)`.

  After each step the due hooks run in the order given. `stop_after(step)` true ends the run
  after that step, which then counts as the last (hooks with `at_last` run). Whatever
  happens, `log.flush()` is called and every object in `close` is closed. Returns the state
  after the last step taken (`state` itself when there is nothing left to do).
  """
  try:
    for step in range(first_step + 1, total_steps + 1):
      state, metrics = step_fn(state, step)
      last = step == total_steps or (stop_after is not None and stop_after(step))
      for hook in hooks:
        if hook.due(step, last):
          hook.fn(step, state, metrics)
      if last:
        break
  finally:
    for closable in close:
      closable.close()
    log.flush()
  return state
