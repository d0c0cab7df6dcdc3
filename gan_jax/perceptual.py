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


def load_vit_features(model_name: str | None, checkpoint: str | os.PathLike) -> Callable:
  """Loads the ViT `checkpoint` (.npz, official layout, or an HF ViT save) and returns its
  feature function.

  `vit_jax.checkpoint.load_for_inference` without the head: the architecture comes from the
  `model.json` that `vit_jax.main` writes beside its npz (the shipped CIFAR-10 ViT has one)
  unless `model_name` (a vit_jax zoo name, e.g. ViT-B_16) is given; without either it is
  the zoo model the shapes fit. The input size is the one the checkpoint was trained at:
  model.json's `resolution`, else what its position embeddings hold (224 px for
  ImageNet-21k ViT-B/16, 384 px for the ImageNet-2012 fine-tuned one), so a checkpoint is
  never run at a size it was not made for.
  """
  from vit_jax import checkpoint as vit_checkpoint  # pylint: disable=g-import-not-at-top
  loaded = vit_checkpoint.load_for_inference(checkpoint, model_name=model_name or None,
                                             head=False, model_arg='--vit-model')
  return vit_features(loaded.model, loaded.params, loaded.resolution)
