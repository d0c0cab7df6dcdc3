"""`vit_jax.main` / `vit_jax.predict` on awkward inputs: folders whose splits differ in classes,
16-bit images, resumed runs and command-line mistakes."""

import functools
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from tests import vit_train_helpers as helpers
from vit_jax import checkpoint as vit_checkpoint
from vit_jax import models_vit, train_loop


def _three_class_dataset(root):
  """Train classes a, b, c (16 images each); the test split lacks class 'a' (b: 7, c: 7)."""
  helpers.write_dataset(root, classes=('a', 'b', 'c'))
  shutil.rmtree(os.path.join(root, 'test', 'a'))
  return str(root)


@functools.cache
def _tiny_params(num_classes):
  """A random init of `helpers.tiny_config`'s model (8x8 input), as numpy arrays: one per
  class count for the whole file (jitted; op by op, each op of an init compiles alone).
  Callers that change it change a copy."""
  model = models_vit.VisionTransformer(num_classes=num_classes, **helpers.tiny_config('x').model)
  init = jax.jit(lambda key: model.init(key, jnp.zeros((1, 8, 8, 3)), train=False)['params'])
  return jax.tree.map(np.asarray, init(jax.random.key(1)))


def _tiny_npz(path, num_classes=2):
  """`_tiny_params(num_classes)` saved as an official .npz."""
  vit_checkpoint.save(path, _tiny_params(num_classes))
  return str(path)


def test_test_split_missing_a_class_keeps_the_train_numbering(tmp_path):
  root = _three_class_dataset(tmp_path / 'ds')
  config = helpers.tiny_config(root)
  source = train_loop._source(config, 'test', class_names=('a', 'b', 'c'))
  labels_by_folder = [('abc'.index(os.path.basename(os.path.dirname(p))))
                      for p in source.paths]
  np.testing.assert_array_equal(source.labels, labels_by_folder)
  assert source.num_classes == 3 and source.class_names == ('a', 'b', 'c')
  # One step at lr 0: the zero-initialised head scores every class alike, and argmax picks
  # class 0 ('a'), which no test image has: the accuracy must be 0, not the share of 'b'.
  final = train_loop.train_and_evaluate(
      helpers.tiny_config(root, total_steps=1, base_lr=0.0, export_npz=False),
      str(tmp_path / 'w'))
  assert final['test_examples'] == 14 and final['test_accuracy'] == 0.0


def test_evaluate_a_three_class_model_on_a_two_class_test_folder(tmp_path):
  root = _three_class_dataset(tmp_path / 'ds')
  config = helpers.tiny_config(root, mode='evaluate')
  params = jax.tree.map(np.copy, _tiny_params(3))  # (its head's kernel is zero)
  params['head']['bias'] = np.asarray([0.0, 0.0, 5.0], np.float32)  # always predicts 'c'
  vit_checkpoint.save(tmp_path / 'c.npz', params)
  with config.unlocked():
    config.pretrained = str(tmp_path / 'c.npz')
  result = train_loop.evaluate_only(config, str(tmp_path / 'w'))
  assert result['test_examples'] == 14 and result['test_accuracy'] == pytest.approx(0.5)


def test_evaluate_takes_the_classes_from_model_json_when_the_train_split_is_gone(tmp_path):
  root = _three_class_dataset(tmp_path / 'ds')
  workdir = str(tmp_path / 'w')
  final = train_loop.train_and_evaluate(helpers.tiny_config(root, total_steps=2), workdir)
  shutil.rmtree(os.path.join(root, 'train'))  # only the test split (without 'a') is left
  result = train_loop.evaluate_only(helpers.tiny_config(root, mode='evaluate'), workdir)
  assert result['test_examples'] == 14
  assert result['test_accuracy'] == pytest.approx(final['test_accuracy'])
  assert result['test_loss'] == pytest.approx(final['test_loss'], rel=1e-5)


def test_test_class_unknown_to_the_model_is_a_clear_error(tmp_path):
  root = _three_class_dataset(tmp_path / 'ds')
  os.rename(os.path.join(root, 'test', 'c'), os.path.join(root, 'test', 'C'))
  with pytest.raises(train_loop.UserInputError, match=r"split 'test': classes \['C'\] are not"):
    train_loop._source(helpers.tiny_config(root), 'test', class_names=('a', 'b', 'c'))


def test_resume_does_not_need_the_pretrained_file_any_more(tmp_path):
  dataset = helpers.write_dataset(tmp_path / 'ds')
  pretrained = _tiny_npz(tmp_path / 'pre.npz')
  workdir = str(tmp_path / 'w')
  # 1 step, then 2: the schedules, so the compiled train steps, of this file's other 1- and
  # 2-step runs (a run of 3 steps compiled one more; compilations are cached across tests).
  config = helpers.tiny_config(dataset, total_steps=1, checkpoint_every=1, export_npz=False,
                               pretrained=pretrained)
  train_loop.train_and_evaluate(config, workdir)
  os.remove(pretrained)  # e.g. on a scratch disk that was cleaned
  config = helpers.tiny_config(dataset, total_steps=2, checkpoint_every=2, export_npz=False,
                               pretrained=pretrained)
  assert train_loop.train_and_evaluate(config, workdir)['step'] == 2



def test_fine_tuning_from_the_workdirs_own_model_npz_is_refused(tmp_path):
  dataset = helpers.write_dataset(tmp_path / 'ds')
  workdir = tmp_path / 'w'
  os.makedirs(workdir)
  pretrained = _tiny_npz(workdir / 'model.npz')
  before = (workdir / 'model.npz').read_bytes()
  config = helpers.tiny_config(dataset, total_steps=1, pretrained=pretrained)
  with pytest.raises(train_loop.UserInputError, match=r'model\.npz that this run writes'):
    train_loop.train_and_evaluate(config, str(workdir))
  assert (workdir / 'model.npz').read_bytes() == before


@pytest.mark.parametrize('mode', ['RGB', 'L'])
def test_16_bit_grey_png_is_scaled_not_clipped(tmp_path, mode):
  from vision_core import images
  grey16 = (np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 257).astype(np.uint16)
  grey16[0, :3] = [0, 32768, 65535]
  Image.fromarray(grey16).save(tmp_path / 'deep.png')
  assert Image.open(tmp_path / 'deep.png').mode.startswith('I;16')
  pixels = images.read_image(tmp_path / 'deep.png', mode=mode)
  expected = np.round(grey16 / 257.0).astype(np.uint8)  # 65535 -> 255, 32768 -> 128
  assert pixels.shape == (16, 16, 3 if mode == 'RGB' else 1)
  for channel in range(pixels.shape[-1]):
    np.testing.assert_array_equal(pixels[..., channel], expected)


@pytest.mark.parametrize('spec, message', [
    ('configs/vit.py:testing', 'error: --config: configs/vit.py:testing: expected MODEL,DATASET'),
    ('configs/vit.py:ViT-Q_16,cifar10', "error: unknown model name 'ViT-Q_16'; valid names"),
    ('configs/nope.py:testing,cifar10', 'error: --config configs/nope.py:testing,cifar10: no '
     'such config file configs/nope.py'),
])
def test_bad_config_argument_is_one_line_without_traceback(tmp_path, spec, message):
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config', spec, '--workdir', str(tmp_path)],
      cwd=helpers.ROOT, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert message in result.stderr and 'Traceback' not in result.stderr
  assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize('module, flag', [('vit_jax.main', '--workdir'),
                                          ('gan_jax.study', '--force')])
def test_help_lists_the_flags(module, flag):
  # Both parse their flags before absl's app.run, which used to register --help.
  result = subprocess.run([sys.executable, '-m', module, '--help'], cwd=helpers.ROOT,
                          capture_output=True, text=True, timeout=120)
  assert 'error' not in result.stderr and 'Traceback' not in result.stderr, result.stderr
  assert flag in result.stdout and '--config' in result.stdout


@pytest.mark.parametrize('flag, value', [('--batch', '0'), ('--top', '-1'),
                                         ('--resolution', '0')])
def test_predict_rejects_non_positive_counts(tmp_path, capsys, flag, value):
  from vit_jax import predict
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'x.png')
  with pytest.raises(SystemExit) as exit_info:
    predict.main(['--checkpoint', _tiny_npz(tmp_path / 'm.npz'), '--model', 'testing',
                  flag, value, str(tmp_path / 'x.png')])
  assert exit_info.value.code == 2
  assert f'{flag} {value}: expected a positive whole number' in capsys.readouterr().err


def test_predict_refuses_a_resolution_that_is_not_whole_patches(tmp_path, capsys):
  from vit_jax import predict
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / 'x.png')
  with pytest.raises(SystemExit):  # before: the last 8 pixels were silently cropped off
    predict.main(['--checkpoint', _tiny_npz(tmp_path / 'm.npz'), '--model', 'testing',
                  '--resolution', '40', str(tmp_path / 'x.png')])
  assert capsys.readouterr().err.endswith(
      'm.npz: resolution 40 (argument) is not a multiple of the 16-pixel patches; use e.g. '
      '32.\n')


def test_predict_names_a_missing_checkpoint_by_its_flag(tmp_path, capsys):
  from vit_jax import predict
  missing = str(tmp_path / 'nope.npz')
  with pytest.raises(SystemExit) as exit_info:  # (tmp_path, an empty folder, is not reached)
    predict.main(['--checkpoint', missing, str(tmp_path)])
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (
      f'vit_jax.predict: error: --checkpoint {missing}: no such file (an official .npz '
      'checkpoint, e.g. ViT-B_16.npz, a model.npz written by vit_jax.main, or an HF ViT '
      'save_pretrained folder).\n')
  # A folder (e.g. the workdir, not its model.npz): said, with the file where there is one.
  with pytest.raises(SystemExit):
    predict.main(['--checkpoint', str(tmp_path), str(tmp_path)])
  assert capsys.readouterr().err.endswith(
      f'--checkpoint {tmp_path} is a folder; expected an official .npz checkpoint, e.g. '
      'ViT-B_16.npz, a model.npz written by vit_jax.main, or an HF ViT save_pretrained '
      'folder.\n')
  _tiny_npz(tmp_path / 'model.npz')
  with pytest.raises(SystemExit):
    predict.main(['--checkpoint', str(tmp_path), str(tmp_path)])
  assert capsys.readouterr().err.endswith(
      f'--checkpoint {tmp_path} is a folder; did you mean {tmp_path / "model.npz"}?\n')


def test_predict_csv_never_replaces_the_checkpoint_or_an_image(tmp_path, capsys):
  from vit_jax import predict
  checkpoint = _tiny_npz(tmp_path / 'm.npz')
  image = tmp_path / 'images' / 'x.png'
  image.parent.mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
  kept = {p: p.read_bytes() for p in (tmp_path / 'm.npz', image)}
  # Before: --force let the CSV replace them ("wrote m.npz").
  for csv_path in (tmp_path / 'm.npz', image, tmp_path / 'images' / '..' / 'images' / 'x.png'):
    with pytest.raises(SystemExit):
      predict.main(['--checkpoint', checkpoint, '--model', 'testing', '--csv', str(csv_path),
                    '--force', str(image.parent)])
    assert 'an input or output of this run; give it another name' in capsys.readouterr().err
  assert all(p.read_bytes() == data for p, data in kept.items())


def test_resume_with_an_incompatible_change_names_the_changed_fields(tmp_path):
  dataset = helpers.write_dataset(tmp_path / 'ds')
  workdir = str(tmp_path / 'w')
  train_loop.train_and_evaluate(
      helpers.tiny_config(dataset, total_steps=1, checkpoint_every=1, export_npz=False), workdir)
  wider = helpers.tiny_config(dataset, total_steps=2, export_npz=False, batch=16)
  wider.model.hidden_size = 12
  with pytest.raises(train_loop.UserInputError,
                     match=r'(?s)saved by another input pipeline.*fields changed since the last '
                           r'run.*: batch 8 -> 16; '
                           r'checkpoint_every 1 -> 3; model\.hidden_size 10 -> 12; '
                           r'total_steps 1 -> 2\.$'):
    train_loop.train_and_evaluate(wider, workdir)


def test_resume_or_evaluate_at_another_resolution_names_the_arrays_and_shapes(tmp_path):
  # Orbax stops at the first mis-shaped array without naming it, and its other reads, still
  # in flight, then printed thousands of lines of tracebacks after the error.
  dataset = helpers.write_dataset(tmp_path / 'ds', size=16)
  workdir = str(tmp_path / 'w')
  train_loop.train_and_evaluate(
      helpers.tiny_config(dataset, total_steps=1, checkpoint_every=1, export_npz=False), workdir)
  # 8x8 images of 4x4 patches: 4 patches + the class token; 16x16: 16 + 1.
  posemb = (r'posembed_input/pos_embedding: checkpoint \(1, 5, 10\), this run \(1, 17, 10\)\n')
  changed = (r'.*fields changed since the last run.*pp\.crop 8 -> 16; pp\.resize 8 -> 16; '
             r'total_steps 1 -> 2\.$')
  bigger = dict(total_steps=2, export_npz=False, checkpoint_every=1)
  bigger.update({'pp.crop': 16, 'pp.resize': 16})
  with pytest.raises(train_loop.UserInputError,
                     match=rf'(?s)arrays differ \(2\):\n  params/Transformer/{posemb}'
                           rf'  opt_state/1/0/trace/Transformer/{posemb}{changed}'):
    train_loop.train_and_evaluate(helpers.tiny_config(dataset, **bigger), workdir)
  with pytest.raises(train_loop.UserInputError,  # evaluate reads only the params
                     match=rf'(?s)arrays differ \(1\):\n  params/Transformer/{posemb}'
                           rf'{changed}'):
    train_loop.evaluate_only(helpers.tiny_config(dataset, mode='evaluate', **bigger), workdir)


def test_predict_prepares_images_with_the_runs_test_ops(tmp_path, capsys):
  # predict always scaled to [-1, 1] after a plain resize, so a model evaluated with other
  # pp.test_ops got other inputs from predict than from the evaluation: other answers.
  from vit_jax import predict
  dataset = helpers.write_dataset(tmp_path / 'ds')
  workdir = tmp_path / 'w'
  config = helpers.tiny_config(dataset, total_steps=2, checkpoint_every=2,
                               **{'pp.test_ops': 'resize(8)|value_range(0, 1)'})
  train_loop.train_and_evaluate(config, str(workdir))
  image_path = os.path.join(dataset, 'test', 'b', '0.png')
  predict.main(['--checkpoint', str(workdir / 'model.npz'), '--top', '2', '--csv',
                str(tmp_path / 'p.csv'), image_path])
  capsys.readouterr()
  model = models_vit.VisionTransformer(num_classes=2, **config.model)
  pixels = np.asarray(Image.open(image_path), np.float64) / 255  # value_range(0, 1)
  logits = np.asarray(model.apply({'params': vit_checkpoint.load(workdir / 'model.npz')},
                                  pixels[None].astype(np.float32)), np.float64)[0]
  probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  rows = [row.split(',') for row in (tmp_path / 'p.csv').read_text().splitlines()[1:]]
  assert {int(r[2]): float(r[4]) for r in rows} == {
      k: pytest.approx(probs[k], abs=2e-6) for k in range(2)}


def test_a_diverged_run_is_one_line_not_a_traceback(tmp_path, capsys):
  from vision_core.errors import cli_errors
  dataset = helpers.write_dataset(tmp_path / 'ds')
  # Without clipping, a step of 3e38 x the gradient overflows float32: loss nan at step 2.
  config = helpers.tiny_config(dataset, base_lr=3e38, grad_norm_clip=0.0)
  with pytest.raises(SystemExit) as exit_info:
    with cli_errors('vit_jax.main'):
      train_loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert exit_info.value.code == 1
  assert capsys.readouterr().err.splitlines()[-1] == (
      'vit_jax.main: error: loss is nan at step 2; lower base_lr.')
  # Nothing diverged was saved (the folder is made at the first save).
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')


def test_predict_on_a_folder_of_class_folders_names_them(tmp_path):
  # e.g. a dataset's test split: only the images directly in a folder are read, and the
  # message used to say just that the folder holds no images.
  from vision_core import images as images_lib
  dataset = helpers.write_dataset(tmp_path / 'ds')
  with pytest.raises(train_loop.UserInputError,
                     match=r'test: folder holds no \.jpg/.*/\.webp files; it has sub-folders '
                           r'\(a, b\), which are not searched: pass them\.$'):
    images_lib.expand_inputs([os.path.join(dataset, 'test')])
  assert len(images_lib.expand_inputs([os.path.join(dataset, 'test', 'a')])) == 7


def test_crop_above_resize_is_named_before_training(tmp_path):
  # e.g. --config.pp.crop=384 on an image folder, whose default pp.resize is 256: the first
  # batch failed in random_crop ('image is only 256x256; resize first').
  dataset = helpers.write_dataset(tmp_path / 'ds')
  config = helpers.tiny_config(dataset, **{'pp.augment': 'resize_crop', 'pp.crop': 12})
  with pytest.raises(train_loop.UserInputError,
                     match=r'^pp\.resize=8 is below pp\.crop=12: .* set --config\.pp\.resize=12 '
                           r'or more'):
    train_loop.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')


def test_evaluate_without_checkpoints_points_to_the_exported_model(tmp_path):
  # Checkpoints are large and often deleted after a run; model.npz is what is kept.
  dataset = helpers.write_dataset(tmp_path / 'ds')
  workdir = tmp_path / 'w'
  final = train_loop.train_and_evaluate(helpers.tiny_config(dataset, total_steps=2),
                                        str(workdir))
  shutil.rmtree(workdir / 'checkpoints')
  exported = str(workdir / 'model.npz')
  with pytest.raises(train_loop.UserInputError,
                     match=rf'no checkpoints and config.pretrained is not set; nothing to '
                           rf'evaluate\. Its exported model is {exported}: '
                           rf'--config\.pretrained={exported} scores it\.$'):
    train_loop.evaluate_only(helpers.tiny_config(dataset, mode='evaluate'), str(workdir))
  result = train_loop.evaluate_only(
      helpers.tiny_config(dataset, mode='evaluate', pretrained=exported), str(workdir))
  assert result['test_loss'] == pytest.approx(final['test_loss'], rel=1e-5)


def test_predict_reads_model_json_once(tmp_path, capsys, monkeypatch):
  from vit_jax import predict
  dataset = helpers.write_dataset(tmp_path / 'ds')
  config = helpers.tiny_config(dataset)
  train_loop.save_model_files(str(tmp_path), _tiny_params(2), config, ('a', 'b'),
                              test_preprocess='resize(8)|value_range(0, 1)')
  reads, model_json = [], vit_checkpoint.model_json
  monkeypatch.setattr(vit_checkpoint, 'model_json',
                      lambda path: reads.append(path) or model_json(path))
  predict.main(['--checkpoint', str(tmp_path / 'model.npz'), '--top', '2',
                os.path.join(dataset, 'test', 'b', '0.png')])
  assert reads == [str(tmp_path / 'model.npz')]
  assert capsys.readouterr().out.splitlines()[1].split()[:2] in (['1', 'a'], ['1', 'b'])
