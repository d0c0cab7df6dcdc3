"""The study's scores for one method (GAN latents or JPEG) against the originals.

Per image: ViT-Score (the study's top-k overlap of the classifier's class rankings for the
original and the reconstruction; chance level k / num_classes), the cosine similarity of
the ViT pre-logits, SSIM, MSE and PSNR (`vit_jax.metrics`, uint8 values, data_range 255),
BRISQUE of the reconstruction (`vit_jax.metrics.brisque`, OpenCV's LIVE model, only when
the model files are given), bits per pixel and compression ratio against the raw pixel
bytes. Per set: FID on raw pixel rows (each image flattened to one `[S*S*C]` row of values
in [0, 1]), as the
study computed it; with a handful of images this is a distance between two small point
clouds, not the Inception FID of the GAN literature.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vision_core.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A ViT classifier: module, float32 params, input resolution, class names, and
  `outputs(params, x [B, R, R, 3]) -> (logits [B, N], pre-logits [B, D])`, jit-compiled."""
  model: Any
  params: Any
  resolution: int
  class_names: list
  outputs: Any = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def load_classifier(checkpoint: str, *, model_name: str = '', resolution: int = 0
                    ) -> Classifier:
  """Loads an official-layout ViT npz (float16 storage is converted to float32)."""
  from vit_jax import predict  # pylint: disable=g-import-not-at-top
  if not os.path.isfile(checkpoint):
    raise UserInputError(f'vit_checkpoint: {checkpoint} does not exist.')
  model, params, names, res = predict.load_model(
      checkpoint, model_name=model_name or None, resolution=resolution or None, labels=None)
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
  return Classifier(model, params, int(res), list(names), _make_outputs(model))


@jax.jit
def _resize(images, size_template):
  b, _, _, c = images.shape
  size = size_template.shape[0]
  return jax.image.resize(images, (b, size, size, c), 'bicubic', antialias=True)


def classifier_outputs(classifier: Classifier, images_uint8) -> tuple[np.ndarray, np.ndarray]:
  """(logits `[B, N]`, pre-logits `[B, D]`) of uint8 `[B, S, S, C]` images.

  Images are resized to the classifier's resolution (bicubic) and mapped to [-1, 1], the
  range of the official and of our ViT checkpoints; grey is repeated to RGB.
  """
  x = np.asarray(images_uint8, np.float32)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  x = x / 127.5 - 1.0
  if x.shape[1] != classifier.resolution or x.shape[2] != classifier.resolution:
    x = _resize(x, np.zeros((classifier.resolution,), np.int8))
  logits, pre = classifier.outputs(classifier.params, x)
  return np.asarray(logits, np.float64), np.asarray(pre, np.float64)


def _make_outputs(model):
  """One compiled program per classifier (flax modules built from ConfigDicts don't hash)."""

  def outputs(params, x):
    pre = model.apply({'params': params}, x, train=False, return_prelogits=True)
    logits = model.apply({'params': params}, x, train=False)
    return logits, pre

  return jax.jit(outputs)


def topk_overlap(logits_a, logits_b, k: int) -> np.ndarray:
  """|top-k(a) ∩ top-k(b)| / k per row: the study's ViT-Score. `[B, N]` x2 -> `[B]`."""
  logits_a, logits_b = np.asarray(logits_a), np.asarray(logits_b)
  n = logits_a.shape[-1]
  if not 1 <= k <= n:
    raise UserInputError(f'vit_score_k={k}: expected 1 <= k <= {n} (the classifier\'s '
                         'number of classes).')
  top_a = np.argsort(-logits_a, axis=-1, kind='stable')[:, :k]
  top_b = np.argsort(-logits_b, axis=-1, kind='stable')[:, :k]
  return np.array([len(set(a) & set(b)) / k for a, b in zip(top_a, top_b)])


def cosine(a, b) -> np.ndarray:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)


def brisque_scores(images_uint8, model: str, range_file: str) -> tuple[np.ndarray | None, str]:
  """(scores `[B]` or None, why absent)."""
  if not model or not range_file:
    return None, ('no BRISQUE model given (config brisque_model / brisque_range: OpenCV\'s '
                  'brisque_model_live.yml and brisque_range_live.yml)')
  for path in (model, range_file):
    if not os.path.isfile(path):
      raise UserInputError(f'brisque model file {path} does not exist.')
  try:
    from vit_jax.metrics import brisque as brisque_lib  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None, 'vit_jax.metrics.brisque is not part of this installation'
  return np.asarray(brisque_lib.brisque(np.asarray(images_uint8), model, range_file)), ''


def score_method(originals, reconstructions, *, classifier: Classifier, k: int,
                 original_logits, original_prelogits, compressed_bytes,
                 brisque_model: str = '', brisque_range: str = '') -> dict:
  """Per-image columns (lists of length B) and set-level values for one method."""
  from vit_jax import metrics  # pylint: disable=g-import-not-at-top
  originals = np.asarray(originals)
  reconstructions = np.asarray(reconstructions)
  if originals.shape != reconstructions.shape:
    raise UserInputError(f'originals {originals.shape} and reconstructions '
                         f'{reconstructions.shape} differ in shape.')
  b, h, w, c = originals.shape
  logits, pre = classifier_outputs(classifier, reconstructions)
  a32, b32 = originals.astype(np.float32), reconstructions.astype(np.float32)
  size = np.asarray(compressed_bytes, np.float64)
  brisque, brisque_note = brisque_scores(reconstructions, brisque_model, brisque_range)
  columns = {
      'vit_score': topk_overlap(original_logits, logits, k),
      'vit_cosine': cosine(original_prelogits, pre),
      'top1_same': (np.argmax(original_logits, -1) == np.argmax(logits, -1)).astype(float),
      'ssim': np.asarray(metrics.ssim(a32, b32, data_range=255.0), np.float64),
      'mse': np.asarray(metrics.mse(a32, b32), np.float64),
      'psnr': np.asarray(metrics.psnr(a32, b32, data_range=255.0), np.float64),
      'brisque': brisque,
      'bytes': size,
      'bpp': 8.0 * size / (h * w),
      'ratio': (h * w * c) / size,
  }
  # Raw-pixel FID on values in [0, 1] (one row per image), as the study computed it.
  fid = metrics.fid(originals.reshape(b, -1) / 255.0,
                    reconstructions.reshape(b, -1) / 255.0) if b >= 2 else None
  return {'columns': columns, 'fid_raw_pixels': fid, 'brisque_note': brisque_note,
          'top1': [classifier.class_names[i] for i in np.argmax(logits, -1)]}
