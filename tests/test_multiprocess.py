"""Several JAX processes on this machine, as on a TPU pod or several GPU boxes.

Each trainer is launched as 2 processes with `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`
and `JAX_PROCESS_ID` (2 CPU devices each, gloo collectives) and must give what one process
with the same devices gives: the global batches do not depend on how many processes feed
them. A SIGTERM that reaches one process must stop both at one step, checkpointed
(JAX's preemption sync), and the rerun must end where an uninterrupted run ends; so must a
run started on 1 process and resumed on 2.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests import vit_train_helpers as helpers
from tests.subprocess_env import xla_flags
from vision_core import host_memory, metrics_log

TIMEOUT_S = 300
_CACHE_SETTINGS = ('JAX_COMPILATION_CACHE_', 'JAX_PERSISTENT_CACHE_')


def _xla_flags(devices: int) -> str:
  """`xla_flags(devices)`, with LLVM at -O0 where the suite compiles at its -O1
  (tests/conftest.py): these processes' numbers are compared with each other's only, never
  with an outside reference (conftest's reason for -O1), and compiling is most of their
  time. The GAN's 2-process run took 47 s instead of 79 s."""
  return xla_flags(devices).replace('--xla_backend_optimization_level=1',
                                    '--xla_backend_optimization_level=0')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def launch(module_argv, logs_dir, *, processes, devices):
  """Starts `python -m MODULE ARGS` as `processes` JAX processes of `devices` CPU devices each;
  returns the `Popen`s (output in `logs_dir/p{i}.log`)."""
  port = _free_port()
  os.makedirs(logs_dir, exist_ok=True)
  procs = []
  for i in range(processes):
    # No JAX_ settings of this process (its platform, its coordinator), but for the test
    # run's compilation cache (tests/conftest.py).
    env = {k: v for k, v in os.environ.items()
           if not k.startswith('JAX_') or k.startswith(_CACHE_SETTINGS)}
    env['XLA_FLAGS'] = _xla_flags(devices)
    if processes > 1:
      env.update(JAX_COORDINATOR_ADDRESS=f'localhost:{port}', JAX_NUM_PROCESSES=str(processes),
                 JAX_PROCESS_ID=str(i))
    with open(os.path.join(logs_dir, f'p{i}.log'), 'w') as log:
      procs.append(subprocess.Popen([sys.executable, '-m', *module_argv], cwd=helpers.ROOT,
                                    env=env, stdout=log, stderr=subprocess.STDOUT))
  return procs


def finish(procs, logs_dir):
  """Waits for every process; returns `(returncodes, logs)`. A hang (one process waiting for
  a peer that died) fails the test with the logs instead of blocking the suite."""
  deadline = time.monotonic() + TIMEOUT_S
  try:
    codes = [p.wait(timeout=max(1, deadline - time.monotonic())) for p in procs]
  except subprocess.TimeoutExpired:
    codes = None
  finally:
    for p in procs:
      p.kill()
  logs = [open(os.path.join(logs_dir, f'p{i}.log')).read() for i in range(len(procs))]
  if codes is None:
    pytest.fail('processes hung:\n' + '\n'.join(log[-3000:] for log in logs))
  return codes, logs


def run(module_argv, logs_dir, *, processes, devices):
  codes, logs = finish(launch(module_argv, logs_dir, processes=processes, devices=devices),
                       logs_dir)
  assert codes == [0] * processes, '\n'.join(log[-3000:] for log in logs)
  return logs


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  # 15 test images in global eval batches of 8: the last one ends in a padding row.
  return helpers.write_dataset(tmp_path_factory.mktemp('ds'), train_per_class=12,
                               test_per_class=5, classes=('a', 'b', 'c'))


def vit_argv(dataset, workdir, total_steps, **more):
  overrides = {'total_steps': total_steps, 'checkpoint_every': 100000, 'eval_every': 0,
               'progress_every': 1, 'batch': 8, 'batch_eval': 8, 'warmup_steps': 0,
               'decay_type': 'constant', 'base_lr': 0.05, 'pp.crop': 8, 'pp.resize': 8,
               'pp.augment': 'pad_crop', 'model.patches.size': '(4,4)', 'mesh': '(-1,1)',
               **more}
  return (['vit_jax.main', '--config', f'configs/vit.py:testing,{dataset}',
           '--workdir', str(workdir)] + [f'--config.{k}={v}' for k, v in overrides.items()])


def _train_losses(workdir):
  rows = metrics_log.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  return [(r['step'], r['loss']) for r in rows if r['split'] == 'train']


def _npz(path):
  with np.load(path, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


def test_vit_two_processes_match_one_and_survive_a_preemption_of_one(dataset, tmp_path):
  # 1. A SIGTERM to process 1 only (as when one host of a pod gets the notice): both stop
  # after the same step, with that step checkpointed, exit 143 and say how to resume.
  preempted = tmp_path / 'preempted'
  procs = launch(vit_argv(dataset, preempted, 100000), tmp_path / 'logs_stop', processes=2,
                 devices=2)
  metrics = preempted / 'metrics.jsonl'
  for _ in range(int(TIMEOUT_S / 0.2)):  # until step 1 is logged
    if any(p.poll() is not None for p in procs) or (metrics.exists() and metrics.stat().st_size):
      break
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  codes, logs = finish(procs, tmp_path / 'logs_stop')
  assert codes == [143, 143], '\n'.join(log[-3000:] for log in logs)
  stop_steps = set()
  for log in logs:
    line = [l for l in log.splitlines() if 'vit_jax.main: stopped by SIGTERM after step' in l]
    assert len(line) == 1 and 'run the same command to resume' in line[0], log[-3000:]
    stop_steps.add(int(line[0].split('after step ')[1].split(';')[0]))
  assert len(stop_steps) == 1
  stop = stop_steps.pop()
  assert os.listdir(preempted / 'checkpoints') == [str(stop)]
  # The runs below end 2 and 4 steps after the stop (the learning rate is constant, so the
  # end does not change the steps).
  middle, total = stop + 2, stop + 4

  # 2. The rerun on 2 processes resumes there; process 0 alone prints the result.
  logs = run(vit_argv(dataset, preempted, total), tmp_path / 'logs_resume', processes=2,
             devices=2)
  assert [s for s, _ in _train_losses(preempted)] == list(range(1, total + 1))
  assert '"test_accuracy"' in logs[0] and '"test_accuracy"' not in logs[1]  # printed once

  # 3. An uninterrupted run on 1 process x 4 devices up to `middle`, resumed on 2 processes
  # (the data position is then found from the step: grain saved it for 1 process).
  one = tmp_path / 'one'
  run(vit_argv(dataset, one, middle), tmp_path / 'logs_one', processes=1, devices=4)
  run(vit_argv(dataset, one, total), tmp_path / 'logs_one_resumed', processes=2, devices=2)
  assert [s for s, _ in _train_losses(one)] == list(range(1, total + 1))

  # Each is the other's uninterrupted run: up to `middle`, the 2-process run (resumed at
  # `stop`) trains as the 1-process one; after it, the run resumed on 2 processes from 1
  # process's checkpoint trains as the 2-process one (uninterrupted since `stop`). A wrong
  # data position or optimizer state after a resume changes the loss far beyond 1e-5. That a
  # resume repeats the uninterrupted run bit for bit: tests/test_vit_train.py (1 process).
  losses_two, losses_one = _train_losses(preempted), _train_losses(one)
  np.testing.assert_allclose([l for _, l in losses_two], [l for _, l in losses_one], rtol=1e-5)
  assert losses_two[-1][1] < losses_two[0][1]
  params_two, params_one = (_npz(w / 'model.npz') for w in (preempted, one))
  for k in params_two:
    np.testing.assert_allclose(params_two[k], params_one[k], rtol=1e-5, atol=1e-6, err_msg=k)
  final_two = json.loads((preempted / 'final.json').read_text())
  final_one = json.loads((one / 'final.json').read_text())
  assert final_two['test_examples'] == final_one['test_examples'] == 15
  np.testing.assert_allclose(final_two['test_loss'], final_one['test_loss'], rtol=1e-5)
  assert final_two['test_accuracy'] == final_one['test_accuracy']


def test_a_data_index_across_processes_is_refused(dataset, tmp_path):
  # Mesh (1, 4) over 2 processes of 2 devices: one data index with both processes' devices.
  # Each process fed it its own rows; JAX took them for copies of one shard, and the run
  # trained on half of each batch and scored 8 of the 15 test images, with exit code 0.
  argv = vit_argv(dataset, tmp_path / 'w', 2, mesh='(1,4)', sharding='tp')
  codes, logs = finish(launch(argv, tmp_path / 'logs', processes=2, devices=2), tmp_path / 'logs')
  assert codes == [2, 2], '\n'.join(log[-3000:] for log in logs)
  for log in logs:
    assert 'vit_jax.main: error: mesh (1, 4) over 2 processes: ' in log, log[-3000:]
    assert 'e.g. (2, 2)' in log
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


def test_gan_two_processes_match_one(dataset, tmp_path):
  argv = lambda workdir: [  # pylint: disable=g-long-lambda
      'gan_jax.main', '--config', f'configs/gan.py:dcgan,{dataset},32', '--workdir',
      str(workdir), '--config.generator.width=4', '--config.discriminator.width=4',
      '--config.generator.latent_dim=8', '--config.batch_size=8', '--config.total_steps=4',
      '--config.fid_samples=16', '--config.log_every=2', '--config.sample_every=2',
      '--config.fid_every=2', '--config.checkpoint_every=2']
  run(argv(tmp_path / 'two'), tmp_path / 'logs_two', processes=2, devices=1)
  run(argv(tmp_path / 'one'), tmp_path / 'logs_one', processes=1, devices=2)
  two, one = (json.loads((tmp_path / w / 'final.json').read_text()) for w in ('two', 'one'))
  assert two.keys() == one.keys() and two['step'] == 4
  np.testing.assert_allclose([two[k] for k in sorted(two)], [one[k] for k in sorted(one)],
                             rtol=1e-5)
  g_two, g_one = _npz(tmp_path / 'two' / 'generator.npz'), _npz(tmp_path / 'one' /
                                                                'generator.npz')
  for k in g_one:
    if g_one[k].dtype.kind == 'f':
      np.testing.assert_allclose(g_two[k], g_one[k], rtol=1e-5, atol=1e-6, err_msg=k)
  assert sorted(os.listdir(tmp_path / 'two' / 'samples')) == ['step_000002.png',
                                                              'step_000004.png']


def test_igpt_two_processes_match_one(dataset, tmp_path):
  argv = lambda workdir: [  # pylint: disable=g-long-lambda
      'igpt_jax.main', '--config', f'configs/igpt.py:testing,{dataset}', '--workdir',
      str(workdir), '--config.image_size=8', '--config.batch_size=8', '--config.total_steps=4',
      '--config.eval_every=2', '--config.checkpoint_every=2', '--config.log_every=2',
      '--config.eval_examples=15', '--config.palette_fit_steps=20', '--config.lr=0.01',
      '--config.warmup_steps=1', '--config.sample_grid=False']
  run(argv(tmp_path / 'two'), tmp_path / 'logs_two', processes=2, devices=1)
  logs = run(argv(tmp_path / 'one'), tmp_path / 'logs_one', processes=1, devices=2)
  # A CPU run keeps freed memory (these processes get no JAX_PLATFORMS).
  if host_memory.glibc_malloc_is_ours_to_set() and not host_memory.accelerator_plugin_installed():
    assert f'CPU run: {host_memory.SETTING}' in logs[0]
  rows = {w: metrics_log.read_jsonl(tmp_path / w / 'metrics.jsonl') for w in ('two', 'one')}
  assert [r['step'] for r in rows['two']] == [r['step'] for r in rows['one']]
  values = {w: [v for r in rows[w] for k, v in sorted(r.items())
                if k in ('loss', 'bits_per_dim')] for w in rows}
  assert len(values['one']) >= 4
  np.testing.assert_allclose(values['two'], values['one'], rtol=1e-5)
  np.testing.assert_array_equal(np.load(tmp_path / 'two' / 'palette.npy'),
                                np.load(tmp_path / 'one' / 'palette.npy'))
  # A time limit: process 0's clock decides, so both stop at the same logging step (were
  # they to disagree, one would wait for the other in a collective until the timeout).
  timed = tmp_path / 'timed'
  run(argv(timed) + ['--config.total_steps=100000', '--config.time_limit_minutes=0.05'],
      tmp_path / 'logs_timed', processes=2, devices=1)
  step = json.loads((timed / 'final.json').read_text())['step']
  assert 0 < step < 100000 and step % 2 == 0
  assert str(step) in os.listdir(timed / 'checkpoints')
