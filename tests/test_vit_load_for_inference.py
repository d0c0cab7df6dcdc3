"""`vit_jax.checkpoint.load_for_inference`: the one loader of predict, assess, the GAN
perceptual term and the study, on checkpoints with and without a model.json."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests.test_vit_model import random_params
from vision_core.errors import UserInputError
from vit_jax import checkpoint as vit_checkpoint
from vit_jax import models_vit
from vit_jax.configs import models

# Shapes that fit no zoo model: only a model.json (or nothing) can describe it.
_OWN = {'model_name': 'ViT-p4-w12-l1', 'classifier': 'token', 'hidden_size': 12,
        'patches': {'size': [4, 4]}, 'representation_size': None,
        'transformer': {'attention_dropout_rate': 0.0, 'dropout_rate': 0.0, 'mlp_dim': 24,
                        'num_heads': 2, 'num_layers': 1}}


def _save(path, config, size, num_classes=3, seed=0):
  """`config`'s model for `size` px with random parameters (all of them: an init's zero head
  would give every model the same zero logits), saved at `path`. (Noise in the shapes of an
  init traced, not run: op by op, each op of an init compiled alone.)"""
  model = models_vit.VisionTransformer(num_classes=num_classes, **config)
  params = random_params(model, size, seed=seed)
  path.parent.mkdir(parents=True, exist_ok=True)
  vit_checkpoint.save(path, params)
  return model, params


def _with_model_json(tmp_path, **overrides):
  path = tmp_path / 'run' / 'model.npz'
  _, params = _save(path, ml_collections.ConfigDict(_OWN), 16)
  meta = {'model_name': _OWN['model_name'], 'model': _OWN, 'num_classes': 3,
          'class_names': ['a', 'b', 'c'], 'resolution': 16, **overrides}
  (tmp_path / 'run' / 'model.json').write_text(json.dumps(meta))
  return path, params


def test_model_json_gives_architecture_resolution_and_class_names(tmp_path):
  path, params = _with_model_json(tmp_path)
  loaded = vit_checkpoint.load_for_inference(path)
  assert (loaded.model_name, loaded.resolution, loaded.resolution_from) == (
      'ViT-p4-w12-l1', 16, 'model.json')
  assert loaded.class_names == ['a', 'b', 'c']
  x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  reference = models_vit.VisionTransformer(num_classes=3, **ml_collections.ConfigDict(_OWN))
  np.testing.assert_allclose(loaded.model.apply({'params': loaded.params}, x, train=False),
                             reference.apply({'params': params}, x, train=False), rtol=1e-6)
  # An explicit resolution wins over model.json's (the position embeddings then mismatch).
  with pytest.raises(UserInputError, match=r'(?s)as ViT-p4-w12-l1, 32 px\).*pos_embedding'):
    vit_checkpoint.load_for_inference(path, resolution=32)


def test_without_head_the_model_gives_pre_logits(tmp_path):
  path, params = _with_model_json(tmp_path)
  loaded = vit_checkpoint.load_for_inference(path, head=False)
  assert 'head' not in loaded.params and loaded.model.num_classes is None
  x = jnp.zeros((2, 16, 16, 3))  # the previous test's shape: its ops, compiled, are reused
  assert loaded.model.apply({'params': loaded.params}, x, train=False).shape == (2, 12)


def test_without_model_json_the_zoo_model_and_size_come_from_the_shapes(tmp_path):
  # As an official checkpoint fine-tuned at another size: no model.json, no name given.
  path = tmp_path / 'official.npz'
  _save(path, models.get_model_config('testing'), 48)
  loaded = vit_checkpoint.load_for_inference(path)
  assert (loaded.model_name, loaded.resolution, loaded.resolution_from) == (
      'testing', 48, 'position embeddings')
  assert loaded.class_names is None and loaded.meta is None


@pytest.mark.parametrize('model_name', [None, 'testing'])
def test_a_checkpoint_with_pre_logits_runs_as_saved(tmp_path, model_name):
  # As the ImageNet-21k releases: a pre_logits layer the zoo config (made for fine-tuning)
  # leaves out, and no model.json. Its logits and features come after that layer.
  config = models.get_model_config('testing')
  config.representation_size = 6
  path = tmp_path / 'i21k.npz'
  model, params = _save(path, config, 32, num_classes=5, seed=3)
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 32, 32, 3)), jnp.float32)
  loaded = vit_checkpoint.load_for_inference(path, model_name=model_name)
  assert loaded.config.representation_size == 6 and loaded.resolution == 32
  np.testing.assert_allclose(loaded.model.apply({'params': loaded.params}, x, train=False),
                             model.apply({'params': params}, x, train=False), rtol=1e-6)
  features = vit_checkpoint.load_for_inference(path, model_name=model_name, head=False)
  np.testing.assert_allclose(
      features.model.apply({'params': features.params}, x, train=False),
      model.apply({'params': params}, x, train=False, return_prelogits=True), rtol=1e-6)
  assert models.get_model_config('testing').get('representation_size') is None  # not changed


def test_shapes_of_no_zoo_model_ask_for_the_name_by_the_callers_flag(tmp_path):
  path = tmp_path / 'own.npz'
  _save(path, ml_collections.ConfigDict(_OWN), 16)
  with pytest.raises(UserInputError, match=r'own\.npz: no model\.json .*no registered model\); '
                     r'pass --vit-model'):
    vit_checkpoint.load_for_inference(path, model_arg='--vit-model')


def test_study_and_gan_fid_name_their_model_fields(tmp_path):
  from gan_jax import fid_vit, study_scores  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'own.npz'
  _save(path, ml_collections.ConfigDict(_OWN), 16)
  with pytest.raises(UserInputError, match=r'no registered model\); pass --config\.vit_model'):
    study_scores.load_classifier(str(path))
  with pytest.raises(UserInputError, match=r'no registered model\); pass config\.fid_vit_model'):
    fid_vit.VitFid(str(path))


def test_a_zoo_name_replaces_model_json_and_a_mismatch_is_named(tmp_path):
  path, _ = _with_model_json(tmp_path)
  # 'testing' has 16 px patches: the file's 4x4 token grid reads as 64 px.
  with pytest.raises(UserInputError,
                     match=r'model\.npz \(as testing, 64 px\): the parameters do not match'):
    vit_checkpoint.load_for_inference(path, model_name='testing')
  with pytest.raises(UserInputError, match='unknown model name'):
    vit_checkpoint.load_for_inference(path, model_name='ViT-Q_99')


@pytest.mark.parametrize('overrides, message', [
    ({'resolution': '16'}, r'model\.json: "resolution" must be a positive whole number'),
    ({'model': 'ViT-B_16'}, r'model\.json: "model" must be the model config'),
    ({'class_names': ['a', 'b']}, r'lists 2 class_names but the head predicts 3 classes'),
])
def test_a_broken_model_json_is_a_clear_error(tmp_path, overrides, message):
  path, _ = _with_model_json(tmp_path, **overrides)
  with pytest.raises(UserInputError, match=message):
    vit_checkpoint.load_for_inference(path)
