"""A small ViT trained from scratch on CIFAR-10 within a CPU time budget.

  python -m vit_jax.main \
      --config configs/vit_cifar10_scratch.py:../shared/data/cifar10 --workdir runs/c10_scratch

`arg` is the CIFAR-10 location: an image folder `{train,test}/{class}/*.jpg` (as
../shared/data/cifar10) or the TFDS name `cifar10`. The model is a ViT with 4x4 patches on the
32x32 images (64 tokens + class token), width 128, 6 blocks, 4 heads, MLP 256 (1.2 M
parameters); AdamW with warmup + cosine decay, label smoothing 0.1, random 4-px-padded crops
and flips, the decoded training set cached in memory (no JPEG decoding per epoch).

Expected result (docs/results.md, 2026-11-26): 67.9% on the 10,000 test images after the
7,000 steps (896k images, 17.9 epochs), 50 minutes on a quiet 2-core CPU (~305 img/s).
"""

import ml_collections

from vit_jax.configs import models


def get_config(arg: str = '../shared/data/cifar10') -> ml_collections.ConfigDict:
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(
      'configs_vit', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'vit.py'))
  vit = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(vit)
  config = vit.get_config(f'ViT-Ti_16,{arg}')
  with config.unlocked():
    config.model = models.vit_config('ViT-p4-w128-l6-cifar', 'Ti', 4, dropout_rate=0.0)
    config.model.hidden_size = 128
    config.model.transformer.num_layers = 6
    config.model.transformer.num_heads = 4
    config.model.transformer.mlp_dim = 256
    config.model_name = 'ViT-p4-w128-l6-cifar'
  config.pp.train, config.pp.test = 'train', 'test'
  config.pp.crop = config.pp.resize = 32
  config.pp.augment = 'pad_crop'
  config.cache_in_memory = True
  config.batch = 128
  config.batch_eval = 500
  config.total_steps = 7000  # 17.9 epochs; ~55 min at ~290 img/s on a quiet 2-core CPU
  config.warmup_steps = 400
  config.optimizer = 'adamw'
  config.base_lr = 2e-3
  config.b2 = 0.99
  config.weight_decay = 0.05
  config.label_smoothing = 0.1
  config.grad_norm_clip = 1.0
  config.eval_every = 1400
  config.checkpoint_every = 1400
  config.progress_every = 50
  config.mesh = (-1, 1)
  return config
