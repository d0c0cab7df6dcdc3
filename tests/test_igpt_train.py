"""Image GPT training on real CIFAR-10: bits/dim falls, resume continues, outputs written."""

import gzip
import importlib.util
import json
import pathlib
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igpt_jax import palette as palette_lib
from igpt_jax import run_palette
from igpt_jax import train
from tests.test_igpt_model import random_params, tiny_model
from vision_core import metrics_log
from vision_core.errors import UserInputError

ROOT = pathlib.Path(__file__).resolve().parents[1]


def load_config(arg):
  spec = importlib.util.spec_from_file_location('igpt_config', ROOT / 'configs' / 'igpt.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def tiny_config(dataset, **overrides):
  config = load_config('testing,cifar10')
  config.update(dict(dataset=str(dataset), image_size=8, batch_size=16, total_steps=150,
                     eval_every=150, checkpoint_every=150, log_every=50, eval_examples=64,
                     palette_fit_images=300, palette_fit_steps=50, lr=1e-2, warmup_steps=20, sample_grid=True))
  config.update(overrides)
  return config


def test_tiny_model_lowers_bits_per_dim_on_cifar10_and_resumes(shared_data, tmp_path):
  config = tiny_config(shared_data / 'cifar10')
  result = train.train_and_evaluate(config, tmp_path)
  # Zero-initialised wtet: exactly uniform over 512 colours, log2(512) / 3 bits per dim.
  assert result['initial_test']['bits_per_dim'] == pytest.approx(3.0, abs=1e-4)
  assert result['test']['bits_per_dim'] < 2.2, result
  for name in ('params.npz', 'palette.npy', 'samples.png', 'final.json', 'metrics.jsonl'):
    assert (tmp_path / name).exists(), name
  assert palette_lib.load_palette(tmp_path / 'palette.npy', num_clusters=512).shape == (512, 3)

  # Resuming: a longer run continues from step 150 (no second initial evaluation).
  config.total_steps, config.sample_grid = 155, False
  resumed = train.train_and_evaluate(config, tmp_path)
  assert resumed['step'] == 155 and resumed['initial_test'] == result['initial_test']
  steps = [r['step'] for r in metrics_log.read_jsonl(tmp_path / 'metrics.jsonl')
           if r['split'] == 'train']
  assert steps == [50, 100, 150, 155]
  assert json.loads((tmp_path / 'final.json').read_text())['step'] == 155

  # Fine-tuning the clf head from those weights (and their palette), jointly generative.
  ft = tiny_config(shared_data / 'cifar10', objective='finetune', total_steps=10,
                   eval_every=10, checkpoint_every=10, log_every=10, eval_examples=32,
                   sample_grid=False, init_from=str(tmp_path / 'params.npz'), lr=1e-3,
                   warmup_steps=2)
  tuned = train.train_and_evaluate(ft, tmp_path / 'ft')
  assert 0.0 <= tuned['test']['accuracy'] <= 1.0
  np.testing.assert_array_equal(np.load(tmp_path / 'ft' / 'palette.npy'),
                                np.load(tmp_path / 'palette.npy'))
  with np.load(tmp_path / 'ft' / 'params.npz') as ft_params:
    assert ft_params['clf/wclf'].shape == (10, 32) and np.abs(ft_params['clf/wclf']).max() > 0


def test_bert_and_finetune_losses_match_their_definitions():
  model = tiny_model(bert=True)
  params = random_params(model)
  tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 16), 0, 512)
  key = jax.random.PRNGKey(1)
  gen, _, _ = train.token_losses(model, params, tokens, objective='bert', key=key)
  keep = np.asarray(jax.random.uniform(key, tokens.shape) > 0.15, np.float32)
  logits = model.apply({'params': params}, tokens, bert_keep=jnp.asarray(keep))['logits']
  logp = np.asarray(jax.nn.log_softmax(logits))
  ce = -np.take_along_axis(logp, np.asarray(tokens)[..., None], -1)[..., 0]
  expected = (ce * (1 - keep)).sum(1) / np.maximum((1 - keep).sum(1), 1)
  np.testing.assert_allclose(gen, expected, rtol=1e-5)

  model = tiny_model(num_classes=3)
  params = random_params(model)
  labels = jnp.asarray([0, 2])
  gen, clf, clf_logits = train.token_losses(model, params, tokens, objective='finetune',
                                            labels=labels)
  logp = np.asarray(jax.nn.log_softmax(clf_logits))
  np.testing.assert_allclose(clf, -logp[[0, 1], [0, 2]], rtol=1e-5)
  assert gen.shape == (2,)


def test_bad_config_values_are_clear_errors():
  config = load_config('testing,cifar10')
  config.objective = 'contrastive'
  with pytest.raises(UserInputError, match="objective='contrastive'"):
    train.build_model(config)
  config = load_config('testing,cifar10')
  config.attention = 'flash'
  with pytest.raises(UserInputError, match=r"attention='flash': expected one of einsum, "):
    train.build_model(config)
  config.attention = 'pallas_interpret'
  assert train.build_model(config).attention == 'pallas_interpret'
  if jax.default_backend() != 'gpu':
    config.attention = 'pallas'
    with pytest.raises(UserInputError, match=r"attention='pallas' runs on NVIDIA GPUs only"):
      train.build_model(config)
  with pytest.raises(ValueError, match='expected SIZE,DATASET'):
    load_config('testing')


def test_the_run_palette_is_saved_in_the_workdir_and_must_not_change(tmp_path):
  rng = np.random.default_rng(5)
  a, b = (rng.uniform(-1, 1, (512, 3)).astype(np.float32) for _ in range(2))
  np.save(tmp_path / 'a.npy', a)
  np.save(tmp_path / 'b.npy', b)
  work = tmp_path / 'run'
  work.mkdir()
  config = load_config('testing,cifar10')
  config.palette = str(tmp_path / 'a.npy')
  centers, new = run_palette.choose_palette(config, None, str(work))
  np.testing.assert_array_equal(centers, a)
  assert new and not (work / 'palette.npy').exists()  # chosen; saved with the outputs
  # Saved with the outputs, as a run does (fine-tuning from its params.npz needs it beside).
  run_palette.save_palette_once(str(work / 'palette.npy'), centers)
  np.testing.assert_array_equal(np.load(work / 'palette.npy'), a)
  # Resuming without --config.palette reuses it (source None: a refit would fail).
  config.palette = ''
  centers, new = run_palette.choose_palette(config, None, str(work))
  np.testing.assert_array_equal(centers, a)
  assert not new
  config.palette = str(tmp_path / 'b.npy')
  with pytest.raises(UserInputError, match=r'palette\.npy: this workdir\'s palette differs'):
    run_palette.choose_palette(config, None, str(work))
  # Nor may init_from's own palette differ from the saved one.
  (tmp_path / 'other').mkdir()
  np.save(tmp_path / 'other' / 'palette.npy', b)
  config.palette, config.init_from = '', str(tmp_path / 'other' / 'params.npz')
  with pytest.raises(UserInputError, match='differs from the one of init_from='):
    run_palette.choose_palette(config, None, str(work))


def test_the_palette_beside_openai_or_hf_weights_is_found(tmp_path):
  """OpenAI's download.py puts kmeans_centers.npy beside model.ckpt-N; an HF model folder
  holds preprocessor_config.json. Both were missed (the HF folder's parent was searched)."""
  rng = np.random.default_rng(10)
  openai, hf = (rng.uniform(-1, 1, (512, 3)).astype(np.float32) for _ in range(2))
  (tmp_path / 'downloads').mkdir()
  np.save(tmp_path / 'downloads' / 'kmeans_centers.npy', openai)
  (tmp_path / 'imagegpt-small').mkdir()
  (tmp_path / 'imagegpt-small' / 'preprocessor_config.json').write_text(
      json.dumps({'clusters': hf.tolist(), 'image_processor_type': 'ImageGPTImageProcessor'}))
  config = load_config('testing,cifar10')
  for init_from, expected in (('downloads/model.ckpt-1000000', openai),
                              ('imagegpt-small', hf)):
    config.init_from = str(tmp_path / init_from)
    np.testing.assert_array_equal(run_palette.choose_palette(
        config, None, str(tmp_path / f'run_{expected is hf}'))[0], expected)
  config.init_from = str(tmp_path / 'elsewhere' / 'params.npz')
  with pytest.raises(UserInputError, match=r'none of .*elsewhere/palette\.npy, .*'
                     r'elsewhere/kmeans_centers\.npy, .*elsewhere/preprocessor_config\.json'):
    run_palette.choose_palette(config, None, str(tmp_path / 'run3'))


def image_folder(root, classes=('a', 'b'), per_class=2, seed=6):
  """A train/test image folder of random 8x8 RGB images, `per_class` per class and split."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  for split in ('train', 'test'):
    for label in classes:
      folder = root / split / label
      folder.mkdir(parents=True)
      for i in range(per_class):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
            folder / f'{i}.png')
  return root


def pretrained(folder, model, seed=6):
  """Random weights of `model` saved as `folder/params.npz`, with a palette beside them."""
  from igpt_jax import checkpoint  # pylint: disable=g-import-not-at-top
  folder.mkdir()
  params = random_params(model, seed=seed)
  checkpoint.save(folder / 'params.npz', params)
  np.save(folder / 'palette.npy',
          np.random.default_rng(seed).uniform(-1, 1, (512, 3)).astype(np.float32))
  return params


def test_a_mismatched_init_from_fails_before_writing_to_the_workdir(tmp_path):
  image_folder(tmp_path / 'data')
  pretrained(tmp_path / 'pre', tiny_model(n_ctx=16))
  config = tiny_config(tmp_path / 'data', objective='finetune', batch_size=8,
                       init_from=str(tmp_path / 'pre' / 'params.npz'))  # n_ctx 64, not 16.
  with pytest.raises(UserInputError, match=r'wpe: expected \(64, 32\), found \(16, 32\)'):
    train.train_and_evaluate(config, tmp_path / 'run')
  # A palette copied there would be taken over by a corrected rerun (another init_from).
  assert not (tmp_path / 'run' / 'palette.npy').exists()


def test_finetuning_replaces_a_head_with_another_class_count(tmp_path, capsys):
  """Weights fine-tuned on 3 classes, fine-tuned again on a 2-class dataset: the head starts
  afresh (zero, as the model's own), every other weight as loaded; was a mis-shaped
  clf/wclf error."""
  from vision_core import npz  # pylint: disable=g-import-not-at-top
  image_folder(tmp_path / 'data', per_class=4)
  loaded = npz.flatten(pretrained(tmp_path / 'pre', tiny_model(n_ctx=64, num_classes=3)))
  config = tiny_config(tmp_path / 'data', objective='finetune', batch_size=8, total_steps=2,
                       eval_every=2, checkpoint_every=2, log_every=1, warmup_steps=1,
                       sample_grid=False, init_from=str(tmp_path / 'pre' / 'params.npz'))
  model = train.build_model(config, num_classes=2)
  params = npz.flatten(train.initial_params(config, model, jax.random.PRNGKey(0)))
  out = capsys.readouterr().out
  assert 'clf/wclf has 3 classes' in out and 'has 2' in out and 'starts from zero' in out
  assert params['clf/wclf'].shape == (2, 32) and not np.any(params['clf/wclf'])
  assert params.keys() == loaded.keys()
  for name in sorted(set(loaded) - {'clf/wclf'}):
    np.testing.assert_array_equal(params[name], loaded[name], err_msg=name)
  result = train.train_and_evaluate(config, tmp_path / 'run')  # And the run fine-tunes it.
  assert result['step'] == 2 and 0.0 <= result['test']['accuracy'] <= 1.0
  with np.load(tmp_path / 'run' / 'params.npz') as tuned:
    assert tuned['clf/wclf'].shape == (2, 32) and np.any(tuned['clf/wclf'])

  # Any other mismatch is still an error naming it, the head aside.
  pretrained(tmp_path / 'small', tiny_model(n_ctx=16, num_classes=3))
  config.init_from = str(tmp_path / 'small' / 'params.npz')
  with pytest.raises(UserInputError, match=r'wpe: expected \(64, 32\)') as error:
    train.initial_params(config, model, jax.random.PRNGKey(0))
  assert 'clf/wclf' not in str(error.value)


def test_sample_grid_of_a_test_split_smaller_than_four_images(tmp_path):
  model = tiny_model(n_ctx=16)
  params = random_params(model)
  rng = np.random.default_rng(7)
  source = [{'image': rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), 'label': 0}
            for _ in range(2)]
  config = load_config('testing,cifar10')
  config.image_size = 4
  centers = rng.uniform(-1, 1, (512, 3)).astype(np.float32)
  train.write_samples(model, params, centers, source, config, tmp_path / 's.png',
                      n_completions=3)  # Was an IndexError after the whole run.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  grid = np.asarray(Image.open(tmp_path / 's.png'))
  assert grid.shape == (2 * 6 + 2, 5 * 6 + 2, 3)
  # Row 2, first panel: the second image, palette-quantised.
  expected = palette_lib.dequantize(palette_lib.quantize(source[1]['image'], centers), centers)
  np.testing.assert_array_equal(grid[8:12, 2:6], expected)


def _write_idx(path, array):
  header = struct.pack('>BBBB', 0, 0, 8, array.ndim) + struct.pack(f'>{array.ndim}I',
                                                                   *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _grey_run_config(tmp_path):
  """A 4x4 grey MNIST-layout dataset, a palette and a 2-step run config."""
  rng = np.random.default_rng(8)
  grey = {'train': rng.integers(0, 256, (40, 4, 4)), 't10k': rng.integers(0, 256, (8, 4, 4))}
  for prefix, images in grey.items():
    _write_idx(tmp_path / f'{prefix}-images-idx3-ubyte.gz', images)
    _write_idx(tmp_path / f'{prefix}-labels-idx1-ubyte.gz', np.arange(len(images)) % 2)
  centers = rng.uniform(-1, 1, (512, 3)).astype(np.float32)
  np.save(tmp_path / 'palette.npy', centers)
  config = tiny_config(tmp_path, image_size=4, batch_size=8, total_steps=2, eval_every=2,
                       checkpoint_every=2, log_every=1, warmup_steps=1,
                       palette=str(tmp_path / 'palette.npy'))
  return grey, centers, config


def test_grey_datasets_are_coded_as_rgb_pixels(tmp_path):
  """MNIST-layout grey images: each grey value g is the RGB pixel (g, g, g) to the palette
  (fitting one, or a given one, used to stop at a reshape traceback in the train step)."""
  from igpt_jax import checkpoint, probe  # pylint: disable=g-import-not-at-top
  from tests.test_igpt_model import numpy_forward  # pylint: disable=g-import-not-at-top
  from vision_core import data, npz  # pylint: disable=g-import-not-at-top
  grey, centers, config = _grey_run_config(tmp_path)
  result = train.train_and_evaluate(config, tmp_path / 'run')

  # The reference: numpy nearest centres of (g, g, g) / 127.5 - 1 and OpenAI's forward pass.
  rgb = np.repeat(grey['t10k'][..., None], 3, -1).reshape(8, 16, 1, 3) / 127.5 - 1
  tokens = np.argmin(((rgb - centers.astype(np.float64)) ** 2).sum(-1), -1)
  params, model = checkpoint.load(tmp_path / 'run' / 'params.npz')
  logits = numpy_forward(npz.flatten(params), tokens, n_head=model.num_heads)[0]
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  nats = -np.take_along_axis(logp, tokens[..., None], -1).mean()
  assert result['test']['bits_per_dim'] == pytest.approx(nats / np.log(2) / 3, rel=1e-4)

  # The linear probe reads them the same way; a palette is fitted on them too.
  probe_tokens, _, _ = probe.load_split(str(tmp_path), 'test', 4, 0, centers)
  order = np.random.default_rng(0).permutation(8)  # load_split's fixed shuffle.
  np.testing.assert_array_equal(probe_tokens, tokens[order])
  config.palette, config.palette_fit_steps = '', 5
  source = data.get_source(str(tmp_path), 'train')
  centers, new = run_palette.choose_palette(config, source, str(tmp_path / 'fit'))
  assert new and centers.shape == (512, 3)


def test_evaluation_subset_spans_the_classes_of_a_class_ordered_folder():
  """Image folders list examples class by class: the first eval_examples of CIFAR-10's test
  folder were all airplanes, so test bits/dim (and fine-tuning accuracy) were one class's."""
  from vision_core import data, mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  labels = np.repeat(np.arange(10), 100)  # 1,000 examples, class by class.
  source = data.ArraySource(np.zeros((1000, 2, 2, 3), np.uint8), labels)
  config = load_config('testing,cifar10')
  config.update(dict(image_size=2, batch_size=8, eval_examples=200))

  def eval_step(params, batch, centers):  # The mean label of the evaluated examples.
    del params, centers
    mask = batch['mask'].astype(jnp.float32)
    return {'bits_per_dim': jnp.sum(batch['label'] * mask), 'count': jnp.sum(mask)}

  mesh = mesh_lib.make_mesh()
  mean_label = train.evaluate(eval_step, None, None, source, config, mesh)['bits_per_dim']
  chosen = labels[np.sort(np.random.default_rng(0).permutation(1000)[:200])]
  assert np.bincount(chosen, minlength=10).min() >= 10  # Every class, roughly evenly.
  assert mean_label == pytest.approx(chosen.mean())
  config.eval_examples = 0  # All of them.
  assert train.evaluate(eval_step, None, None, source, config, mesh)['bits_per_dim'] == 4.5


def test_final_json_keeps_earlier_measurements_when_resumed(tmp_path):
  """Running a finished workdir again (nothing to train) wrote a final.json without its
  test metrics; a resumed run dropped the initial evaluation."""
  _, _, config = _grey_run_config(tmp_path)
  config.sample_grid = False
  first = train.train_and_evaluate(config, tmp_path / 'run')
  assert set(first) >= {'initial_test', 'test'}
  saved = json.loads((tmp_path / 'run' / 'final.json').read_text())
  assert train.train_and_evaluate(config, tmp_path / 'run') == saved  # Finished: kept.
  assert json.loads((tmp_path / 'run' / 'final.json').read_text()) == saved
  config.total_steps = 3  # Resumed for one more step: a new test, the same initial one.
  resumed = json.loads(json.dumps(train.train_and_evaluate(config, tmp_path / 'run')))
  assert resumed['step'] == 3 and resumed['initial_test'] == saved['initial_test']
  assert resumed['test'] != saved['test']
  rows = metrics_log.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')
  assert [r['step'] for r in rows if r['split'] == 'test'] == [0, 2, 3]  # One initial eval.
