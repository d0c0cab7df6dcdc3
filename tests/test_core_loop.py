"""vision_core.loop: the step loop the three trainers share."""

import os
import signal

import pytest

from vision_core import loop
from vision_core.errors import Stopped, cli_errors


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


def _signal_at(signum, at_step, times=1):
  """A step function that sends itself `signum` (`times` times) during step `at_step`."""
  def step_fn(state, step):
    if step == at_step:
      for _ in range(times):
        os.kill(os.getpid(), signum)
    return state + 1, step
  return step_fn


@pytest.mark.parametrize('signum', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_finishes_the_step_checkpoints_it_and_stops(signum):
  """A preemption notice (SIGTERM) or Ctrl-C mid-step: that step completes, the at_stop
  hook (the checkpoint) runs for it unless it already ran, the run raises Stopped, and the
  previous signal handler is back."""
  before = signal.getsignal(signum)
  for at_step, saves in ((5, [4, 5]), (4, [4])):
    rec = Recorder()
    with pytest.raises(Stopped) as stopped:
      loop.run(0, step_fn=_signal_at(signum, at_step), first_step=0, total_steps=100,
               log=rec, close=(rec,),
               hooks=[loop.Every(2, hook(rec, 'log')),
                      loop.Every(4, hook(rec, 'save'), at_stop=True)])
    assert stopped.value.step == at_step and stopped.value.saved
    assert stopped.value.reason == signal.Signals(signum).name
    assert stopped.value.exit_status == 128 + signum
    assert [e[1] for e in rec.events if e[0] == 'save'] == saves
    assert [e[1] for e in rec.events if e[0] == 'log'] == [2, 4]
    assert rec.events[-2:] == ['closed', 'flushed']
    assert signal.getsignal(signum) == before


def test_a_second_signal_stops_at_once():
  rec = Recorder()
  with pytest.raises(KeyboardInterrupt) as interrupted:
    loop.run(0, step_fn=_signal_at(signal.SIGINT, 3, times=2), first_step=0,
             total_steps=100, log=rec, close=(rec,),
             hooks=[loop.Every(4, hook(rec, 'save'), at_stop=True)])
  assert not isinstance(interrupted.value, Stopped)
  assert rec.events == ['closed', 'flushed']  # no checkpoint: the user insisted


def test_cli_message_says_how_to_resume(capsys):
  with pytest.raises(SystemExit) as exit_info:
    with cli_errors('vit_jax.main'):
      raise Stopped(1200, 'SIGTERM', saved=True)
  assert exit_info.value.code == 143
  err = capsys.readouterr().err
  assert 'vit_jax.main: stopped by SIGTERM after step 1200' in err
  assert 'checkpoint of step 1200 is saved: run the same command to resume' in err


def test_cli_turns_unusable_paths_into_one_line(tmp_path, capsys):
  # e.g. `--workdir` under a file, or an output folder the user may not write: one line
  # naming the path and exit status 2, not a traceback.
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(SystemExit) as exit_info:
    with cli_errors('vit_jax.main'):
      os.makedirs(tmp_path / 'notes.txt' / 'run')
  assert exit_info.value.code == 2
  assert capsys.readouterr().err.startswith('vit_jax.main: error: [Errno 20] Not a directory')
  with pytest.raises(SystemExit) as exit_info:
    with cli_errors('gan_jax.compress'):
      raise PermissionError(13, 'Permission denied', '/data/out.gan')
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
      "gan_jax.compress: error: [Errno 13] Permission denied: '/data/out.gan'\n")
