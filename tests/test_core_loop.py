"""vision_core.loop: the step loop the three trainers share."""

import pytest

from vision_core import loop


class Recorder:
  def __init__(self):
    self.events = []

  def close(self):
    self.events.append('closed')

  def flush(self):
    self.events.append('flushed')


def hook(rec, name):
  return lambda step, state, metrics: rec.events.append((name, step, state, metrics))


def test_periods_order_last_step_and_closing():
  rec = Recorder()
  state = loop.run(0, step_fn=lambda s, step: (s + step, -step), first_step=2, total_steps=7,
                   log=rec, close=(rec,),
                   hooks=[loop.Every(2, hook(rec, 'a')), loop.Every(3, hook(rec, 'b')),
                          loop.Every(0, hook(rec, 'never')),
                          loop.Every(5, hook(rec, 'c'), at_last=False)])
  assert state == 3 + 4 + 5 + 6 + 7
  assert rec.events == [
      ('b', 3, 3, -3), ('a', 4, 7, -4), ('c', 5, 12, -5), ('a', 6, 18, -6), ('b', 6, 18, -6),
      ('a', 7, 25, -7), ('b', 7, 25, -7), ('never', 7, 25, -7), 'closed', 'flushed']


def test_last_step_skips_hooks_without_at_last():
  rec = Recorder()
  loop.run(0, step_fn=lambda s, step: (s, None), first_step=0, total_steps=4, log=rec,
           hooks=[loop.Every(2, hook(rec, 'eval'), at_last=False)])
  assert [e[:2] for e in rec.events if e != 'flushed'] == [('eval', 2)]


def test_stop_after_makes_that_step_the_last():
  rec = Recorder()
  state = loop.run(0, step_fn=lambda s, step: (step, None), first_step=0, total_steps=100,
                   log=rec, stop_after=lambda step: step == 3,
                   hooks=[loop.Every(10, hook(rec, 'save'))])
  assert state == 3
  assert rec.events == [('save', 3, 3, None), 'flushed']


def test_nothing_to_do_returns_state():
  rec = Recorder()
  assert loop.run('done', step_fn=None, first_step=5, total_steps=5, log=rec,
                  hooks=[loop.Every(1, hook(rec, 'x'))]) == 'done'
  assert rec.events == ['flushed']


def test_error_still_closes_and_flushes():
  rec = Recorder()

  def crash(step, state, metrics):
    raise FloatingPointError('loss is nan')

  with pytest.raises(FloatingPointError):
    loop.run(0, step_fn=lambda s, step: (s, None), first_step=0, total_steps=10, log=rec,
             close=(rec,), hooks=[loop.Every(2, crash)])
  assert rec.events == ['closed', 'flushed']
