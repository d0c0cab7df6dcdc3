"""Tiny weights and configs for the study tests: random 28x28 DCGAN, 16x16 PGAN and ViTs."""

import importlib.util
import json
import os
import pathlib

import jax
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
GENERATOR = {'family': 'dcgan', 'latent_dim': 8, 'image_size': 28, 'channels': 3, 'width': 4}
VIT_MODEL = {
    'model_name': 'testing', 'patches': {'size': [4, 4]}, 'hidden_size': 16,
    'transformer': {'mlp_dim': 16, 'num_heads': 2, 'num_layers': 1,
                    'attention_dropout_rate': 0.0, 'dropout_rate': 0.0},
    'classifier': 'token', 'representation_size': None}
CLASSES = [f'class{i}' for i in range(6)]


def write_generator(path, seed=0):
  from gan_jax import generators  # pylint: disable=g-import-not-at-top
  generators.save(path, GENERATOR, generators.init_params(GENERATOR, seed=seed))
  return str(path)


def write_vit(folder, seed=0, resolution=16):
  """`folder/model.npz` (official layout) + `model.json` as `vit_jax.main` writes them."""
  from vit_jax import checkpoint, models_vit  # pylint: disable=g-import-not-at-top
  os.makedirs(folder, exist_ok=True)
  import ml_collections  # pylint: disable=g-import-not-at-top
  model = models_vit.VisionTransformer(num_classes=len(CLASSES),
                                       **ml_collections.ConfigDict(VIT_MODEL))
  params = model.init(jax.random.PRNGKey(seed),
                      np.zeros((1, resolution, resolution, 3), np.float32), train=False)['params']
  # A random head is near-uniform; scale it so the class ranking depends on the image.
  params = jax.tree.map(np.asarray, params)
  params['head']['kernel'] = params['head']['kernel'] * 50.0
  checkpoint.save(os.path.join(folder, 'model.npz'), params)
  with open(os.path.join(folder, 'model.json'), 'w', encoding='utf-8') as f:
    json.dump({'model_name': 'testing', 'model': VIT_MODEL, 'num_classes': len(CLASSES),
               'class_names': CLASSES, 'resolution': resolution, 'dataset': 'none'}, f)
  return os.path.join(str(folder), 'model.npz')


def load_study_config(preset='default'):
  spec = importlib.util.spec_from_file_location('configs_study', ROOT / 'configs' / 'study.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(preset)


def tiny_config(tmp_path, *, generator=None, vit=None, **overrides):
  config = load_study_config('default')
  config.generator = generator or write_generator(tmp_path / 'g.npz')
  config.vit_checkpoint = vit or write_vit(tmp_path / 'vit')
  config.images = 'skimage:astronaut,skimage:logo,skimage:coffee'
  config.steps = 30
  config.restarts = 2
  config.stop_patience = 0
  config.vit_score_k = 2
  config.brisque_model = ''
  config.brisque_range = ''
  config.figure_scale = 2
  config.out = str(tmp_path / 'study')
  for key, value in overrides.items():
    config[key] = value
  return config


PGAN = {'family': 'pgan', 'dim_latent': 8, 'depth_scale0': 8, 'depth_other_scales': [4, 4],
        'dim_output': 3}


def write_pgan(path, seed=0):
  """A tiny Progressive GAN generator (16x16), the family of the full-size preset."""
  from gan_jax import generators  # pylint: disable=g-import-not-at-top
  generators.save(path, PGAN, generators.init_params(PGAN, seed=seed))
  return str(path)


def write_zoo_vit(path, name='testing', resolution=32, num_classes=6, seed=0):
  """A ViT of the zoo config `name` as a bare official-layout npz (no model.json)."""
  from vit_jax import checkpoint, models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import models  # pylint: disable=g-import-not-at-top
  model = models_vit.VisionTransformer(num_classes=num_classes,
                                       **models.get_model_config(name))
  params = model.init(jax.random.PRNGKey(seed),
                      np.zeros((1, resolution, resolution, 3), np.float32), train=False)['params']
  checkpoint.save(path, jax.tree.map(np.asarray, params))
  return str(path)
