"""Tiny image folders and configs for the ViT training tests."""

import importlib.util
import os
import pathlib

import numpy as np
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parents[1]


def write_dataset(root, *, train_per_class=16, test_per_class=7, size=8, classes=('a', 'b')):
  """Two well-separated classes (dark vs bright noisy squares) as PNG folders."""
  rng = np.random.default_rng(0)
  for split, n in (('train', train_per_class), ('test', test_per_class)):
    for k, name in enumerate(classes):
      folder = pathlib.Path(root) / split / name
      os.makedirs(folder, exist_ok=True)
      for i in range(n):
        pixels = np.clip(60 + 130 * k + rng.integers(-40, 40, (size, size, 3)), 0, 255)
        Image.fromarray(pixels.astype(np.uint8)).save(folder / f'{i}.png')
  return str(root)


def load_config_module(name='vit'):
  spec = importlib.util.spec_from_file_location(f'configs_{name}', ROOT / 'configs' / f'{name}.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def tiny_config(dataset, **overrides):
  """The 'testing' ViT (1 block, width 10) on 8x8 images with 4x4 patches, SGD, no warmup."""
  config = load_config_module().get_config(f'testing,{dataset}')
  config.model.patches.size = (4, 4)
  config.model.transformer.dropout_rate = 0.0
  config.pp.crop = 8
  config.pp.resize = 8
  config.pp.augment = 'none'
  config.batch = 8
  config.batch_eval = 8
  config.total_steps = 6
  config.warmup_steps = 0
  config.base_lr = 0.1
  config.eval_every = 0
  config.checkpoint_every = 3
  config.progress_every = 1
  config.mesh = (1, 1)
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def train_step_hlo(model, mesh, *, batch: int, side: int, strategy='replicated',
                   num_classes=10):
  """`(HLO text, abstract state)` of `model`'s AdamW train step compiled for `mesh` (which
  may hold compile-only GPU devices) on an abstract `[batch, side, side, 3]` batch split over
  the data axis: what the sharding and layout tests read."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from vision_core import mesh as mesh_lib, optim
  from vit_jax import train
  # pylint: enable=g-import-not-at-top
  schedule = optim.make_schedule(base_lr=0.01, total_steps=10)
  tx = optim.make_optimizer(name='adamw', schedule=schedule, grad_norm_clip=1.0,
                            weight_decay=0.1)
  state, shardings = train.abstract_train_state(model=model, tx=tx,
                                                image_shape=(side, side, 3), mesh=mesh,
                                                strategy=strategy)
  images = jax.ShapeDtypeStruct((batch, side, side, 3), jnp.float32,
                                sharding=mesh_lib.batch_sharding(mesh, 4))
  labels = jax.ShapeDtypeStruct((batch,), jnp.int32, sharding=mesh_lib.batch_sharding(mesh, 1))
  step = train.make_train_step(model=model, tx=tx, schedule=schedule, mesh=mesh,
                               state_shardings=shardings, num_classes=num_classes)
  return step.lower(state, {'image': images, 'label': labels}).compile().as_text(), state
