"""FID on our ViT's pre-logit features, for tracking GAN training (`fid_vit` in metrics.jsonl).

The feature extractor is a ViT classifier checkpoint in the official `.npz` layout with the
`model.json` that `vit_jax.main` writes beside it (default: the shipped CIFAR-10 ViT,
`vit_jax/weights/vit_cifar10/model.npz`, 32x32 RGB input, 128-d pre-logits). The features are
its pre-logits (`vit_jax.metrics.vit_extractor`), the distance `vit_jax.metrics.fid` on
float64 `GaussianStats`.

Input convention (the same for real and generated images, so neither side is favoured):
  1. images as uint8 `[B, H, W, C]` (generator output in [-1, 1] is mapped with
     `gan_jax.report.to_uint8`; real images go through the run's preprocessing, then the same);
  2. grey (C = 1, e.g. MNIST 28x28) is repeated to 3 channels;
  3. when H, W differ from the ViT's resolution, a bilinear resize (`jax.image.resize`,
     half-pixel centres, antialiased when shrinking) to it, rounded back to uint8;
  4. `vit_extractor` maps [0, 255] to [-1, 1] and returns the pre-logits.
So MNIST digits are scored as 32x32 grey-on-RGB images by a ViT that was trained on CIFAR-10:
the values are comparable only between runs with the same checkpoint and dataset, not with
published (Inception) FIDs.

Real statistics are computed once per run and cached in `WORKDIR/fid_stats/` under a name keyed
by the dataset (path, split, preprocessing, sample count) and the checkpoint's SHA-256, so a
resumed run (or a second run in the same workdir) reuses them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import zipfile
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vision_core import hf_io, io, metrics_log
from vision_core.errors import UserInputError
from vit_jax import checkpoint as vit_checkpoint
from vit_jax import hf_import, metrics

# Bump when the input convention above changes: old cached statistics then stop matching.
CONVENTION = 'uint8|grey->rgb|bilinear-resize|vit-prelogits:v1'


def checkpoint_sha256(path: str) -> str:
  """SHA-256 of the checkpoint's bytes and of its `model.json` (which fixes the architecture);
  for an HF save, of its weights, config.json and preprocessor_config.json."""
  digest = hashlib.sha256()
  if hf_import.is_hf_save(path):
    files = hf_io.save_files(hf_io.weights_file(path))
  else:
    files = (path, os.path.join(os.path.dirname(os.path.abspath(path)), 'model.json'))
  for file in files:
    if os.path.isfile(file):
      with open(file, 'rb') as f:
        for block in iter(lambda f=f: f.read(1 << 20), b''):
          digest.update(block)
  return digest.hexdigest()


@functools.partial(jax.jit, static_argnames='resolution')
def to_vit_input(images: jax.Array, *, resolution: int) -> jax.Array:
  """uint8 `[B, H, W, 1 or 3]` -> uint8 `[B, resolution, resolution, 3]` (steps 2-3 above)."""
  if images.shape[-1] == 1:
    images = jnp.repeat(images, 3, axis=-1)
  b, h, w, c = images.shape
  if (h, w) == (resolution, resolution):
    return images
  x = jax.image.resize(images.astype(jnp.float32), (b, resolution, resolution, c), 'bilinear',
                       antialias=True)
  return jnp.clip(jnp.round(x), 0, 255).astype(jnp.uint8)


class VitFid:
  """A ViT feature extractor for FID: statistics of uint8 image sets, cached real statistics.

  Args:
    checkpoint: the ViT `.npz` (official layout; `model.json` beside it, or `model_name`), or
      an HF ViT save.
    model_name: zoo name (e.g. 'ViT-B_16') for a checkpoint without `model.json`.
    mesh: optional `vision_core.mesh` mesh; each batch is sharded over its 'data' axis.
    batch_size: images per compiled call (every call has this shape: the last is padded).
    field: the config field that named `checkpoint`, for error messages.
  """

  def __init__(self, checkpoint: str, *, model_name: str = '', mesh=None,
               batch_size: int = 500, field: str = 'config.fid_vit_checkpoint'):
    from gan_jax import study_scores  # pylint: disable=g-import-not-at-top
    if not checkpoint or not vit_checkpoint.is_present(checkpoint):
      raise UserInputError(
          f'{field}: {checkpoint or "(empty)"} does not exist; expected a ViT classifier .npz '
          '(official layout, with the model.json that vit_jax.main writes beside it), e.g. '
          'vit_jax/weights/vit_cifar10/model.npz, or an HF ViT save_pretrained folder; or set '
          'it to "" to skip fid_vit.')
    if batch_size < 1:
      raise UserInputError(f'config.fid_batch_size={batch_size}: expected >= 1.')
    self.checkpoint = checkpoint
    self.classifier = study_scores.load_classifier(checkpoint, model_name=model_name,
                                                   model_field='config.fid_vit_model')
    self.sha256 = checkpoint_sha256(checkpoint)
    self.batch_size = batch_size
    self._vit = metrics.vit_extractor(self.classifier.model, self.classifier.params, mesh=mesh)

  @property
  def resolution(self) -> int:
    return self.classifier.resolution

  def features(self, images, *, pad_to: int = 0) -> np.ndarray:
    """uint8 `[n, H, W, C]` -> `[n, D]` pre-logits, in one call of `max(n, pad_to)` images."""
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
      raise UserInputError(f'fid_vit: expected uint8 images [B, H, W, 1 or 3], got '
                           f'{images.dtype} {images.shape}.')
    n = len(images)
    if n < pad_to:  # One compiled shape for every batch; the padded rows are cropped off.
      images = np.concatenate([images, np.repeat(images[-1:], pad_to - n, axis=0)])
    vit_input = np.asarray(to_vit_input(images, resolution=self.resolution))
    return self._vit(vit_input)[:n]

  def stats(self, images) -> metrics.GaussianStats:
    """float64 mean and covariance of the features of uint8 `[N, H, W, C]` images."""
    images = np.asarray(images)
    size = max(1, min(self.batch_size, len(images)))
    batches = (images[i:i + size] for i in range(0, len(images), size))
    return metrics.feature_stats(batches, functools.partial(self.features, pad_to=size))

  def real_stats(self, load_images: Callable[[], Any], *, cache_dir: str,
                 dataset: Mapping[str, Any]) -> tuple[metrics.GaussianStats, str, bool]:
    """(statistics, cache file, whether it came from the cache) of the real images.

    `load_images()` -> uint8 `[N, H, W, C]` is only called when no cached file matches
    `dataset` (a JSON-able description: path, split, preprocessing, sample count) and this
    checkpoint's SHA-256.
    """
    key = {'dataset': dict(dataset), 'vit_checkpoint_sha256': self.sha256,
           'convention': CONVENTION}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    path = io.join(cache_dir, f'real_{digest}.npz')
    if io.exists(path):
      try:
        stats = metrics.GaussianStats.load(path)
      except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise UserInputError(f'{path}: cached FID statistics are unreadable ({e}); delete '
                             'the file to recompute them.') from e
      return stats, path, True
    stats = self.stats(load_images())
    if jax.process_index() == 0:
      stats.save(path)
      metrics_log.write_json(io.join(cache_dir, f'real_{digest}.json'),
                             {**key, 'vit_checkpoint': os.path.abspath(self.checkpoint),
                              'count': stats.count})
    return stats, path, False

  @staticmethod
  def fid(real: metrics.GaussianStats, fake: metrics.GaussianStats) -> float:
    return metrics.fid(real, fake)
