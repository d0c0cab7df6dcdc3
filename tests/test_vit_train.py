"""ViT training, resume, meshes, eval coverage and bad input (issue 3 acceptance)."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from tests import vit_train_helpers as helpers
from vision_core import data, host_memory, metrics_log, optim
from vision_core import mesh as mesh_lib
from vision_core.errors import Stopped, UserInputError
from vit_jax import checkpoint as vit_checkpoint
from vit_jax import models_vit, train, train_loop


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return helpers.write_dataset(tmp_path_factory.mktemp('ds'))


@pytest.fixture(scope='module')
def uninterrupted(dataset, tmp_path_factory):
  """One 6-step run (checkpoints at 3 and 6) shared by several tests."""
  workdir = str(tmp_path_factory.mktemp('run'))
  final = train_loop.train_and_evaluate(helpers.tiny_config(dataset), workdir)
  return workdir, final


def test_loss_goes_down_checkpoint_written_and_eval_complete(uninterrupted):
  workdir, final = uninterrupted
  rows = metrics_log.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  losses = [r['loss'] for r in rows if r['split'] == 'train']
  assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
  assert sorted(os.listdir(os.path.join(workdir, 'checkpoints'))) == ['3', '6']
  assert final['test_examples'] == 14 and final['step'] == 6
  saved = json.loads(open(os.path.join(workdir, 'final.json')).read())
  assert saved['test_accuracy'] == final['test_accuracy']
  assert any(n.startswith('events.out.tfevents') for n in
             os.listdir(os.path.join(workdir, 'tensorboard')))


def test_second_run_resumes_at_saved_step(uninterrupted, dataset, tmp_path):
  workdir, _ = uninterrupted
  copy = tmp_path / 'copy'
  subprocess.run(['cp', '-r', workdir, str(copy)], check=True)
  final = train_loop.train_and_evaluate(helpers.tiny_config(dataset, total_steps=8), str(copy))
  rows = metrics_log.read_jsonl(copy / 'metrics.jsonl')
  train_steps = [r['step'] for r in rows if r['split'] == 'train']
  assert train_steps == [1, 2, 3, 4, 5, 6, 7, 8]  # 7 and 8 appended by the resumed run
  assert final['step'] == 8


def test_kill_and_sigterm_then_resume_give_identical_params(uninterrupted, dataset, tmp_path):
  """A crash (KeyboardInterrupt) during step 5 of 6 leaves the step-3 checkpoint. The rerun
  resumes there and gets a preemption notice (SIGTERM) during step 5: step 5 is checkpointed
  on the way out (checkpoints come every 3 steps), so the last run does only step 6, and it
  ends with the parameters of the uninterrupted run. (Both interruptions in one workdir:
  each run takes seconds, and the second resumes from the first.)"""
  workdir, _ = uninterrupted
  def crash(step):
    if step == 5:  # after the step-3 checkpoint, before the step-6 one
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    train_loop.train_and_evaluate(helpers.tiny_config(dataset), str(tmp_path), on_step=crash)
  assert os.listdir(tmp_path / 'checkpoints') == ['3']
  def preempt(step):
    if step == 5:
      os.kill(os.getpid(), signal.SIGTERM)
  with pytest.raises(Stopped) as stopped:
    train_loop.train_and_evaluate(helpers.tiny_config(dataset), str(tmp_path), on_step=preempt)
  assert stopped.value.step == 5 and stopped.value.saved
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '5']
  train_loop.train_and_evaluate(helpers.tiny_config(dataset), str(tmp_path))
  rows = metrics_log.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in rows if r['split'] == 'train'] == [1, 2, 3, 4, 5, 6]
  resumed = vit_checkpoint.load(tmp_path / 'model.npz')
  reference = vit_checkpoint.load(os.path.join(workdir, 'model.npz'))
  jax.tree.map(np.testing.assert_array_equal, resumed, reference)


def test_cli_sigterm_exits_143_with_a_checkpoint_and_a_resume_hint(dataset, tmp_path):
  """`kill` (SIGTERM) of a running `python -m vit_jax.main`: exit status 143, one line on
  stderr naming the step and how to resume, and that step's checkpoint in the workdir."""
  overrides = {'total_steps': 100000, 'checkpoint_every': 100000, 'eval_every': 0,
               'progress_every': 1, 'batch': 8, 'batch_eval': 8, 'warmup_steps': 0,
               'pp.crop': 8, 'pp.resize': 8, 'pp.augment': 'none', 'model.patches.size': '(4,4)',
               'mesh': '(1,1)'}
  command = [sys.executable, '-m', 'vit_jax.main', '--config',
             f'configs/vit.py:testing,{dataset}', '--workdir', str(tmp_path)]
  command += [f'--config.{k}={v}' for k, v in overrides.items()]
  process = subprocess.Popen(command, cwd=helpers.ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
  metrics = tmp_path / 'metrics.jsonl'
  try:
    for _ in range(600):  # until it has logged a step (imports and compilation first)
      if process.poll() is not None or (metrics.exists() and metrics.stat().st_size):
        break
      time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
  finally:
    process.kill()
  assert process.returncode == 143, stderr[-2000:]
  # A CPU run keeps freed memory (vision_core.host_memory; its own test measures the effect).
  if host_memory.jax_runs_on_cpu() and host_memory.glibc_malloc_is_ours_to_set():
    assert f'CPU run: {host_memory.SETTING}' in stdout
  match = re.search(r'vit_jax.main: stopped by SIGTERM after step (\d+); the checkpoint of '
                    r'step \1 is saved: run the same command to resume', stderr)
  assert match, stderr[-2000:]
  assert 'Traceback' not in stderr
  assert os.listdir(tmp_path / 'checkpoints') == [match.group(1)]


def _tiny_model(**kw):
  config = helpers.tiny_config('unused').model
  config.hidden_size = 16
  config.transformer.num_heads = 2
  config.transformer.mlp_dim = 32
  return models_vit.VisionTransformer(num_classes=3, **{**config, **kw})


def _losses(mesh, strategy, batches, accum_steps=1, steps=3, mixup_alpha=0.0, **model_kw):
  model = _tiny_model(**model_kw)
  schedule = optim.make_schedule(base_lr=0.01, total_steps=10)
  tx = optim.make_optimizer(name='adamw', schedule=schedule, grad_norm_clip=1.0,
                            weight_decay=0.1)
  state, shardings = train.create_train_state(model=model, tx=tx, image_shape=(8, 8, 3),
                                              mesh=mesh, strategy=strategy)
  step = train.make_train_step(model=model, tx=tx, schedule=schedule, mesh=mesh,
                               state_shardings=shardings, num_classes=3,
                               accum_steps=accum_steps, label_smoothing=0.1,
                               mixup_alpha=mixup_alpha)
  losses = []
  for batch in batches[:steps]:
    state, metrics = step(state, mesh_lib.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  return np.asarray(losses), jax.device_get(state.params)


def _batches(n=3, size=16):
  rng = np.random.default_rng(0)
  return [{'image': rng.uniform(-1, 1, (size, 8, 8, 3)).astype(np.float32),
           'label': rng.integers(0, 3, size).astype(np.int32)} for _ in range(n)]


def test_randaugment_config_goes_after_crop_and_flip():
  config = helpers.tiny_config('unused', **{'pp.augment': 'pad_crop', 'pp.randaugment': (2, 9)})
  train_spec, test_spec = train_loop.preprocess_specs(config, channels=3)
  assert train_spec == ('resize(8)|random_crop(8, pad=4, mode="reflect")|flip_lr|'
                        'randaugment(2, 9)|value_range(-1, 1)')
  assert 'randaugment' not in test_spec
  config.pp.randaugment = (0, 9)
  assert 'randaugment' not in train_loop.preprocess_specs(config, channels=3)[0]
  config.pp.randaugment = (2, 12)
  with pytest.raises(UserInputError, match=r'pp.randaugment=\(2, 12\)'):
    train_loop.preprocess_specs(config, channels=3)


def test_mixup_ratio_is_beta_distributed_and_mixes_with_the_reversed_batch():
  x = jnp.arange(24, dtype=jnp.float32).reshape(4, 6)
  labels = jnp.arange(4)
  mixed, partners, lam = train.mixup(x, labels, jax.random.key(3), 0.4)
  assert 0 <= float(lam) <= 1
  np.testing.assert_allclose(mixed, lam * x + (1 - lam) * x[::-1], rtol=1e-6)
  np.testing.assert_array_equal(partners, [3, 2, 1, 0])
  lams = jax.vmap(lambda k: train.mixup(x, labels, k, 0.4)[2])(
      jax.random.split(jax.random.key(0), 4000))
  assert scipy.stats.kstest(np.asarray(lams), 'beta', args=(0.4, 0.4)).pvalue > 1e-3


def test_mixup_loss_is_the_ratio_weighted_cross_entropy():
  """alpha = 1e6 pins the ratio to 0.5 (std 4e-4), so the step's loss can be computed here
  independently: half the cross entropy against each label of the half-half image mix."""
  mesh = mesh_lib.make_mesh((1, 1), jax.devices()[:1])
  batch = _batches(n=1)[0]
  model = _tiny_model()
  schedule = optim.make_schedule(base_lr=0.01, total_steps=10)
  tx = optim.make_optimizer(name='sgd', schedule=schedule)
  state, shardings = train.create_train_state(model=model, tx=tx, image_shape=(8, 8, 3),
                                              mesh=mesh)
  params = jax.device_get(state.params)
  step = train.make_train_step(model=model, tx=tx, schedule=schedule, mesh=mesh,
                               state_shardings=shardings, num_classes=3, mixup_alpha=1e6,
                               donate=False)
  _, metrics = step(state, mesh_lib.shard_batch(batch, mesh))
  images = 0.5 * batch['image'] + 0.5 * batch['image'][::-1]
  # Jitted: op by op, each op of the forward pass compiles alone.
  log_p = jax.jit(lambda p: jax.nn.log_softmax(model.apply({'params': p}, images), -1))(params)
  rows = np.arange(len(images))
  expected = -0.5 * np.mean(log_p[rows, batch['label']] + log_p[rows, batch['label'][::-1]])
  np.testing.assert_allclose(float(metrics['loss']), expected, atol=2e-3)


@pytest.fixture(scope='module')
def one_device_losses():
  """The losses of 3 steps on one device (conv patch embedding, no mixup, no accumulation),
  which the mesh tests compare with: each run compiles a train step (~4 s on a CPU), so
  this one is shared."""
  return _losses(mesh_lib.make_mesh((1, 1), jax.devices()[:1]), 'replicated', _batches())[0]


# 'matmul': the patch embedding's layout pin runs per device (vision_core.layouts). It runs
# with mixup, whose partner of a row is the same whatever the mesh (the batch reversed
# globally): a test of its own compiled two more train steps for that.
@pytest.mark.parametrize('patch_embedding, mixup_alpha', [('conv', 0.0), ('matmul', 0.4)])
def test_data_and_model_meshes_match_one_device(patch_embedding, mixup_alpha,
                                                one_device_losses):
  assert jax.device_count() == 8
  batches = _batches()
  options = dict(patch_embedding=patch_embedding, mixup_alpha=mixup_alpha)
  if patch_embedding == 'conv' and not mixup_alpha:
    one = one_device_losses
  else:
    one, _ = _losses(mesh_lib.make_mesh((1, 1), jax.devices()[:1]), 'replicated', batches,
                     **options)
  eight, _ = _losses(mesh_lib.make_mesh((8, 1)), 'replicated', batches, **options)
  four_two, _ = _losses(mesh_lib.make_mesh((4, 2)), 'fsdp_tp', batches, **options)
  if not mixup_alpha:  # (with mixup, each step's loss is of another mix of its batch)
    assert one[-1] < one[0]
  np.testing.assert_allclose(eight, one, atol=1e-5, rtol=0)
  np.testing.assert_allclose(four_two, one, atol=1e-5, rtol=0)


def test_a_jax_make_mesh_mesh_matches_one_device(one_device_losses):
  """A mesh from `jax.make_mesh` (Explicit axes by default) trains as ours does: before
  `mesh.auto_axes`, the class token's concatenation refused its operands' shardings, and
  gradient accumulation (accum_steps=2) its sharding constraint. The reference runs without
  accumulation: it matches the full batch to 1e-6 (test_gradient_accumulation_matches_
  full_batch), well inside this test's 1e-5."""
  explicit = jax.make_mesh((4, 2), ('data', 'model'),
                           axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  four_two, _ = _losses(explicit, 'fsdp_tp', _batches(), accum_steps=2)
  np.testing.assert_allclose(four_two, one_device_losses, atol=1e-5, rtol=0)


def test_gradient_accumulation_matches_full_batch():
  mesh = mesh_lib.make_mesh((2, 1), jax.devices()[:2])
  batches = _batches(n=1)
  full_loss, full = _losses(mesh, 'replicated', batches, steps=1)
  acc_loss, acc = _losses(mesh, 'replicated', batches, accum_steps=2, steps=1)
  np.testing.assert_allclose(acc_loss, full_loss, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), acc, full)


def test_eval_counts_every_example_once_and_matches_numpy():
  mesh = mesh_lib.make_mesh((2, 1), jax.devices()[:2])
  model = _tiny_model()
  # Init and forward pass jitted: op by op, each of their ops compiles alone.
  params = jax.jit(model.init)(jax.random.key(1), jnp.zeros((1, 8, 8, 3)))['params']
  params['head']['kernel'] = jax.random.normal(jax.random.key(2), (16, 3))
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (23, 8, 8, 3), dtype=np.uint8)
  labels = rng.integers(0, 3, 23)
  source = data.ArraySource(images, labels)
  eval_step = train.make_eval_step(model=model, mesh=mesh,
                                   params_shardings=mesh_lib.replicated(mesh), num_classes=3)
  result = train.evaluate(eval_step, params, data.eval_batches(
      source, global_batch_size=16, preprocess='value_range(-1, 1)'), mesh)
  logits = np.asarray(jax.jit(model.apply)({'params': params}, (images - 127.5) / 127.5))
  assert result['num_examples'] == 23
  assert result['accuracy'] == pytest.approx(np.mean(logits.argmax(-1) == labels))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  assert result['loss'] == pytest.approx(-np.mean(logp[np.arange(23), labels]), rel=1e-5)


def test_bfloat16_compute_trains(dataset, tmp_path):
  config = helpers.tiny_config(dataset, dtype='bfloat16', total_steps=4, export_npz=False)
  final = train_loop.train_and_evaluate(config, str(tmp_path))
  rows = metrics_log.read_jsonl(tmp_path / 'metrics.jsonl')
  losses = [r['loss'] for r in rows if r['split'] == 'train']
  assert np.isfinite(losses).all() and losses[-1] < losses[0]
  assert final['test_examples'] == 14


def test_bad_inputs_have_clear_messages(dataset, tmp_path):
  with pytest.raises(UserInputError, match=r'batch=12 is not divisible by the 8 devices'):
    train_loop.train_and_evaluate(helpers.tiny_config(dataset, batch=12, mesh=(-1, 1)),
                                  str(tmp_path / 'w1'))
  with pytest.raises(UserInputError, match=r'^total_steps=0: expected > 0\.$'):
    train_loop.train_and_evaluate(helpers.tiny_config(dataset, total_steps=0),
                                  str(tmp_path / 'w1'))
  with pytest.raises(UserInputError, match=r'does not exist'):
    train_loop.train_and_evaluate(helpers.tiny_config(str(tmp_path / 'missing')),
                                  str(tmp_path / 'w2'))
  with pytest.raises(UserInputError, match=r'fewer than one batch: batch=256\. Lower batch'):
    train_loop.train_and_evaluate(helpers.tiny_config(dataset, batch=256),
                                  str(tmp_path / 'w2'))
  gan_run = tmp_path / 'gan_run'
  gan_run.mkdir()
  (gan_run / 'config.json').write_text(helpers.load_config_module('gan').get_config().to_json())
  for run in (train_loop.train_and_evaluate, train_loop.evaluate_only):
    with pytest.raises(UserInputError, match=r'gan_run holds the run of another program'):
      run(helpers.tiny_config(dataset), str(gan_run))
  (tmp_path / 'a_file').write_text('keep')
  with pytest.raises(UserInputError, match=r'a_file exists and is not a folder'):
    train_loop.train_and_evaluate(helpers.tiny_config(dataset), str(tmp_path / 'a_file'))
  bad = tmp_path / 'bad'
  helpers.write_dataset(bad)
  (bad / 'train' / 'a' / 'notes.png').write_text('not an image')
  with pytest.raises(UserInputError, match=r'notes\.png: not a readable image'):
    train_loop.train_and_evaluate(helpers.tiny_config(str(bad), total_steps=4),
                                  str(tmp_path / 'w3'))
  with pytest.raises(UserInputError, match=r"attention='flash': expected one of einsum"):
    train_loop.train_and_evaluate(helpers.tiny_config(dataset, attention='flash'),
                                  str(tmp_path / 'w5'))
  with pytest.raises(UserInputError, match=r"mlp_impl='triton': expected one of xla, pallas"):
    train_loop.train_and_evaluate(helpers.tiny_config(dataset, mlp_impl='triton'),
                                  str(tmp_path / 'w5'))
  if jax.default_backend() != 'gpu':
    for attention in ('cudnn', 'pallas'):
      with pytest.raises(UserInputError, match=(
          f"^attention='{attention}' runs on NVIDIA GPUs only, and this run's backend is "
          f"{jax.default_backend()}; use einsum")):
        train_loop.train_and_evaluate(helpers.tiny_config(dataset, attention=attention),
                                      str(tmp_path / 'w7'))
    for field in ('norm_impl', 'mlp_impl'):
      with pytest.raises(UserInputError, match=(
          f"^{field}='pallas' runs on NVIDIA GPUs only, .*; use xla \\(any backend\\)")):
        train_loop.train_and_evaluate(helpers.tiny_config(dataset, **{field: 'pallas'}),
                                      str(tmp_path / 'w7'))
  dropout = helpers.tiny_config(dataset, attention='xla')
  dropout.model.transformer.attention_dropout_rate = 0.1
  with pytest.raises(UserInputError, match=r"attention='xla' has no attention dropout"):
    train_loop.train_and_evaluate(dropout, str(tmp_path / 'w6'))
  os.makedirs(bad / 'test' / 'c')
  with pytest.raises(UserInputError, match=r'test/c: empty class folder'):
    train_loop.evaluate_only(helpers.tiny_config(str(bad)), str(tmp_path / 'w4'))


def test_skip_bad_images_trains_and_counts(tmp_path):
  bad = tmp_path / 'bad'
  helpers.write_dataset(bad)
  (bad / 'train' / 'a' / 'notes.png').write_text('not an image')
  source = data.ImageFolderSource(bad, 'train', skip_bad_images=True)
  assert len(source.skipped) == 1 and len(source) == 32


def test_config_typo_lists_valid_fields(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config', 'configs/vit.py:testing,cifar10',
       '--workdir', str(tmp_path), '--config.total_stepz=5'],
      cwd=helpers.ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert 'total_stepz: no such config field. Did you mean total_steps' in result.stderr
  assert 'Valid fields: accum_steps' in result.stderr and 'Traceback' not in result.stderr


def test_predict_cli_matches_model_and_writes_csv(uninterrupted, dataset, tmp_path, capsys):
  from PIL import Image
  from vit_jax import predict
  workdir, _ = uninterrupted
  checkpoint = os.path.join(workdir, 'model.npz')
  image_path = os.path.join(dataset, 'test', 'b', '0.png')
  out_csv = tmp_path / 'pred.csv'
  predict.main(['--checkpoint', checkpoint, '--top', '2', '--csv', str(out_csv), image_path,
                os.path.join(dataset, 'test', 'a')])
  table = capsys.readouterr().out
  assert table.splitlines()[0] == image_path and len(table.splitlines()) == 3 * 8
  params = vit_checkpoint.load(checkpoint)
  config = helpers.tiny_config(dataset)
  model = models_vit.VisionTransformer(num_classes=2, **config.model)
  pixels = (np.asarray(Image.open(image_path), np.float32) - 127.5) / 127.5
  # Jitted (as the inits below): op by op, each op compiles alone.
  logits = np.asarray(jax.jit(model.apply)({'params': params}, pixels[None]), np.float64)[0]
  probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  rows = out_csv.read_text().splitlines()
  assert rows[0] == 'file,rank,class_index,label,probability' and len(rows) == 1 + 2 * 8
  file, rank, index, label, prob = rows[1].split(',')
  assert (file, rank, label) == (image_path, '1', 'ab'[int(np.argmax(probs))])
  assert float(prob) == pytest.approx(probs.max(), abs=1e-5)
  with pytest.raises(SystemExit) as exit_info:
    predict.main(['--checkpoint', checkpoint, '--csv', str(out_csv), image_path])
  assert exit_info.value.code == 2
  assert 'already exists' in capsys.readouterr().err


def test_predict_official_layout_with_model_name(tmp_path, capsys):
  from PIL import Image
  from vit_jax import predict
  from vit_jax.configs import models
  model = models_vit.VisionTransformer(num_classes=10, **models.get_model_config('testing'))
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  vit_checkpoint.save(tmp_path / 'official.npz', jax.tree.map(np.asarray, params))
  other = models_vit.VisionTransformer(num_classes=10, **helpers.tiny_config('x').model)
  other_params = jax.jit(other.init)(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))['params']
  vit_checkpoint.save(tmp_path / 'patch4.npz', jax.tree.map(np.asarray, other_params))
  Image.fromarray(np.zeros((12, 20, 3), np.uint8)).save(tmp_path / 'x.jpg')
  # No model.json, no --model: the shapes fit one zoo model ('testing'), which is used.
  predict.main(['--checkpoint', str(tmp_path / 'official.npz'), str(tmp_path / 'x.jpg')])
  assert 'airplane' in capsys.readouterr().out
  # Shapes that fit no zoo model (patch 4): the user is told to name it.
  with pytest.raises(SystemExit):
    predict.main(['--checkpoint', str(tmp_path / 'patch4.npz'), str(tmp_path / 'x.jpg')])
  assert 'no registered model); pass --model' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    predict.main(['--checkpoint', str(tmp_path / 'patch4.npz'), '--model', 'testing',
                  '--resolution', '16', str(tmp_path / 'x.jpg')])
  assert 'embedding/kernel: expected (16, 16, 3, 10), found (4, 4, 3, 10)' in \
      capsys.readouterr().err
  predict.main(['--checkpoint', str(tmp_path / 'official.npz'), '--model', 'testing',
                '--resolution', '16', str(tmp_path / 'x.jpg')])
  captured = capsys.readouterr()
  assert 'airplane' in captured.out  # 10 classes -> CIFAR-10 names; zero head -> uniform 10%
  assert '10.00%' in captured.out
  assert 'cifar10 names assumed for a 10-class head' in captured.err  # a guess, and said
  # Without --resolution: read from the position embeddings (16 px), not taken as 224.
  predict.main(['--checkpoint', str(tmp_path / 'official.npz'), '--model', 'testing',
                str(tmp_path / 'x.jpg')])
  captured = capsys.readouterr()
  assert 'resolution: 16 px, from the checkpoint' in captured.err
  assert '10.00%' in captured.out


def test_evaluate_mode_scores_latest_checkpoint(uninterrupted, dataset, tmp_path):
  workdir, final = uninterrupted
  copy = tmp_path / 'copy'
  subprocess.run(['cp', '-r', workdir, str(copy)], check=True)
  result = train_loop.evaluate_only(helpers.tiny_config(dataset, mode='evaluate'), str(copy))
  assert result['test_examples'] == 14
  assert result['test_accuracy'] == pytest.approx(final['test_accuracy'])
  assert result['test_loss'] == pytest.approx(final['test_loss'], rel=1e-5)
  assert json.loads((copy / 'eval.json').read_text())['params'].endswith('step 6')


def test_evaluate_mode_reads_only_the_params(uninterrupted, dataset, tmp_path):
  # An evaluation needs neither the training run's optimizer (its state is not read) nor a
  # valid schedule; it used to restore the whole train state, so both had to match.
  workdir, final = uninterrupted
  copy = tmp_path / 'copy'
  subprocess.run(['cp', '-r', workdir, str(copy)], check=True)
  config = helpers.tiny_config(dataset, mode='evaluate', optimizer='adamw', total_steps=1,
                               warmup_steps=5, sharding='fsdp', mesh=(-1, 1))
  result = train_loop.evaluate_only(config, str(copy))
  assert result['params'].endswith('step 6') and result['test_examples'] == 14
  assert result['test_accuracy'] == pytest.approx(final['test_accuracy'])
  assert result['test_loss'] == pytest.approx(final['test_loss'], rel=1e-5)


def test_config_picks_the_kernels(dataset):
  """configs/vit.py's mlp_impl, norm_impl and patch_embedding reach the model."""
  config = helpers.tiny_config(dataset, mlp_impl='pallas_interpret',
                               norm_impl='pallas_interpret', patch_embedding='matmul')
  model = train_loop.build_model(config, num_classes=3)
  assert (model.mlp_impl, model.norm_impl, model.patch_embedding) == (
      'pallas_interpret', 'pallas_interpret', 'matmul')
  default = train_loop.build_model(helpers.tiny_config(dataset), num_classes=3)
  assert (default.mlp_impl, default.norm_impl, default.patch_embedding) == (
      'xla', 'xla', 'conv')
