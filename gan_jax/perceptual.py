"""Perceptual features for the latent search: our ViT's pre-logits.

`vit_features` returns a function `images [N, H, W, C] in [-1, 1] -> [N, D]` that resizes
to the ViT's input size (bilinear), repeats a grey channel to RGB, and returns the
pre-logits (`return_prelogits=True`). It is traced into the search's jit program.
"""

from __future__ import annotations

import os
from typing import Callable

import jax
import jax.numpy as jnp


def vit_features(module, params, image_size: int) -> Callable:
  """Feature function of a `vit_jax.models_vit.VisionTransformer` and its params."""
  def features(images):
    if images.shape[-1] == 1:
      images = jnp.repeat(images, 3, axis=-1)
    n, _, _, c = images.shape
    images = jax.image.resize(images, (n, image_size, image_size, c), 'bilinear')
    return module.apply({'params': params}, images, train=False, return_prelogits=True)
  return features


def load_vit_features(model_name: str, checkpoint: str | os.PathLike,
                      image_size: int = 224) -> Callable:
  """Builds the ViT `model_name` (vit_jax zoo), loads `checkpoint` (.npz), returns features."""
  from vit_jax import checkpoint as vit_checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax import models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import models  # pylint: disable=g-import-not-at-top
  config = models.get_model_config(model_name)
  module = models_vit.VisionTransformer(num_classes=None, **config)
  dummy = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  expected = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), dummy))['params']
  params = vit_checkpoint.load(checkpoint)
  params.pop('head', None)  # Pre-logits only; a classifier head is not needed.
  from vision_core import npz  # pylint: disable=g-import-not-at-top
  npz.check_matches(params, expected, source=os.fspath(checkpoint))
  return vit_features(module, params, image_size)
