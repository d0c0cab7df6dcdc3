"""`vit_jax.hf_export`: HF transformers' own `from_pretrained` and image processor give our
model's outputs from the folder it writes; a bad target or model is refused by name."""

import json
import os

import jax
import numpy as np
import pytest

from tests.test_vit_hf_import import hf_outputs
from vision_core.errors import UserInputError
from vit_jax import checkpoint, hf_export, hf_import, models_vit
from vit_jax.configs import models

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


def random_params(config, num_classes=4, size=32, seed=0):
  model = models_vit.VisionTransformer(num_classes=num_classes, **config)
  params = model.init(jax.random.key(seed), np.zeros((1, size, size, 3), np.float32))['params']
  rng = np.random.default_rng(seed)  # (LayerNorms start at one, the head at zero: random.)
  return model, jax.tree.map(lambda x: (x + rng.normal(size=x.shape) * 0.3).astype(np.float32),
                             params)


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  """A `vit_jax.main`-style model.npz + model.json (with class names) for 'testing'."""
  directory = tmp_path_factory.mktemp('run')
  config = models.get_model_config('testing')
  model, params = random_params(config)
  checkpoint.save(directory / 'model.npz', params)
  (directory / 'model.json').write_text(json.dumps({
      'model_name': 'testing', 'model': config.to_dict(), 'resolution': 32,
      'class_names': ['cat', 'dog', 'eel', 'fox']}))
  return directory, model, params


def test_hf_gives_our_logits_and_import_gives_our_params(run_dir, tmp_path, capsys):
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from vit_jax import predict  # pylint: disable=g-import-not-at-top
  directory, model, params = run_dir
  out = tmp_path / 'hf'
  hf_export.main(['--checkpoint', str(directory / 'model.npz'), '--out', str(out)])
  assert 'from_pretrained' in capsys.readouterr().err
  assert sorted(os.listdir(out)) == sorted(hf_export.EXPORT_FILES)
  hf = transformers.ViTForImageClassification.from_pretrained(out).eval()
  assert hf.config.id2label == {0: 'cat', 1: 'dog', 2: 'eel', 3: 'fox'}
  images = np.random.default_rng(1).uniform(-1, 1, (3, 32, 32, 3)).astype(np.float32)
  expected = np.asarray(model.apply({'params': params}, images))
  np.testing.assert_allclose(hf_outputs(hf, images), expected, atol=1e-5)
  # HF's processor from the folder, on a real photo: predict's probabilities.
  processor = transformers.ViTImageProcessorPil.from_pretrained(out)
  photo = skimage.data.astronaut()
  Image.fromarray(photo).save(tmp_path / 'photo.png')
  pixels = processor(images=Image.fromarray(photo), return_tensors='np')['pixel_values']
  hf_probs = torch.softmax(torch.from_numpy(hf_outputs(hf, pixels.transpose(0, 2, 3, 1))), -1)
  ours = predict.predict([str(tmp_path / 'photo.png')], model=model, params=params,
                         resolution=32, top=4)[0][1]
  np.testing.assert_allclose([p for _, p in sorted(ours)], hf_probs[0].numpy(), atol=1e-5)
  # And back: the same parameters, bit for bit.
  back = hf_import.load(out).params
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))


@pytest.mark.parametrize('name,changes,message', [
    ('R+ViT-Ti_16', {}, 'it is a hybrid'),
    ('ViT-S_16-gap-norep', {}, "classifier is 'gap'"),
    ('testing', {'representation_size': 8}, r'it has a pre_logits layer \(representation_size 8\)'),
])
def test_models_hf_cannot_hold_are_named(tmp_path, name, changes, message):
  config = models.get_model_config(name).to_dict()
  config.update(changes)
  loaded = checkpoint.Inference(model=None, config=config, params={'head': {'bias': [0, 0]}},
                                resolution=64, resolution_from='argument', model_name=name,
                                class_names=None, meta=None)
  with pytest.raises(UserInputError, match=f'cannot hold this model: {message}'):
    hf_export.export(loaded, str(tmp_path / 'hf'))
  assert not os.listdir(tmp_path)


def test_an_existing_folder_is_replaced_only_when_forced_and_an_export(run_dir, tmp_path,
                                                                      capsys):
  directory = run_dir[0]
  args = ['--checkpoint', str(directory / 'model.npz'), '--out', str(tmp_path / 'hf')]
  hf_export.main(args)
  first = (tmp_path / 'hf' / 'model.safetensors').read_bytes()
  with pytest.raises(SystemExit):
    hf_export.main(args)
  assert 'already holds an HF export of this tool; pass --force' in capsys.readouterr().err
  _, other = random_params(models.get_model_config('testing'), seed=1)
  checkpoint.save(tmp_path / 'other.npz', other)
  args = ['--checkpoint', str(tmp_path / 'other.npz'), '--model', 'testing', '--out',
          str(tmp_path / 'hf')]
  hf_export.main(args + ['--force'])  # a new export replaces the earlier one
  assert (tmp_path / 'hf' / 'model.safetensors').read_bytes() != first
  assert json.loads((tmp_path / 'hf' / 'config.json').read_text())['id2label']['3'] == '3'
  (tmp_path / 'hf' / 'README.md').write_text('notes')  # the user's own file: never deleted
  with pytest.raises(SystemExit):
    hf_export.main(args + ['--force'])
  assert 'not an HF export of this tool (it holds README.md)' in capsys.readouterr().err
  assert (tmp_path / 'hf' / 'README.md').read_text() == 'notes'
  assert sorted(os.listdir(tmp_path)) == ['hf', 'other.npz']  # no staging folder left


def test_a_failed_write_keeps_the_earlier_export(run_dir, tmp_path, monkeypatch):
  import safetensors.numpy  # pylint: disable=g-import-not-at-top
  directory = run_dir[0]
  args = ['--checkpoint', str(directory / 'model.npz'), '--out', str(tmp_path / 'hf')]
  hf_export.main(args)
  before = {n: (tmp_path / 'hf' / n).read_bytes() for n in os.listdir(tmp_path / 'hf')}

  def full_disk(*unused_args, **unused_kwargs):
    raise OSError(28, 'No space left on device')
  monkeypatch.setattr(safetensors.numpy, 'save_file', full_disk)
  with pytest.raises(OSError, match='No space left'):
    hf_export.export(checkpoint.load_for_inference(str(directory / 'model.npz')),
                     str(tmp_path / 'hf'), force=True)
  assert {n: (tmp_path / 'hf' / n).read_bytes() for n in os.listdir(tmp_path / 'hf')} == before
  assert sorted(os.listdir(tmp_path)) == ['hf']


def test_the_shipped_cifar10_vit_exports_with_its_class_names(tmp_path):
  """Trained weights (exact GELU, 4 px patches): HF's model and processor from the export give
  predict's probabilities for a real photo, and CIFAR-10's names."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import vit_jax  # pylint: disable=g-import-not-at-top
  from vit_jax import predict  # pylint: disable=g-import-not-at-top
  hf_export.main(['--checkpoint', vit_jax.SHIPPED_CIFAR10_VIT, '--out', str(tmp_path / 'hf')])
  hf = transformers.ViTForImageClassification.from_pretrained(tmp_path / 'hf').eval()
  assert hf.config.hidden_act == 'gelu' and hf.config.id2label[3] == 'cat'
  processor = transformers.ViTImageProcessorPil.from_pretrained(tmp_path / 'hf')
  photo = skimage.data.chelsea()
  Image.fromarray(photo).save(tmp_path / 'cat.png')
  pixels = processor(images=Image.fromarray(photo), return_tensors='np')['pixel_values']
  hf_probs = torch.softmax(torch.from_numpy(hf_outputs(hf, pixels.transpose(0, 2, 3, 1))), -1)
  model, params, _, resolution = predict.load_model(vit_jax.SHIPPED_CIFAR10_VIT, model_name=None,
                                                    resolution=None, labels=None)
  ours = predict.predict([str(tmp_path / 'cat.png')], model=model, params=params,
                         resolution=resolution, top=10)[0][1]
  np.testing.assert_allclose([p for _, p in sorted(ours)], hf_probs[0].numpy(), atol=1e-5)
