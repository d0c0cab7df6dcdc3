"""Feature extractors for FID, and FID from image sets or per image pair.

An extractor maps a `[B, H, W, C]` batch to `[B, D]` float features. Three kinds:
  * `inception_extractor(variables)`: the FID Inception-v3's pool3 (D = 2048), the standard
    FID (comparable with pytorch-fid and the TTUR code when the images are the same).
  * `vit_extractor(model, params)`: our ViT's pre-logits (D = hidden or representation size).
  * `pixel_extractor`: each image flattened to one row of raw values (D = H * W * C).
Set-level FID: `fid_from_images(batches_a, batches_b, extractor)` streams feature statistics
batch by batch (`GaussianStats`), so sets of any size fit in memory.

The study's own FID numbers are per image pair, on raw pixel rows: `pixel_row_fid(a, b)`
treats each of the H rows of an image as one sample of W * C values and computes the Frechet
distance between the rows of the original and the rows of the reconstruction (see
docs/metrics.md for the exact convention).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from vision_core import images as images_lib
from vision_core import mesh as mesh_lib
from vision_core.errors import UserInputError
from vit_jax.metrics import checks
from vit_jax.metrics import frechet
from vit_jax.metrics import inception

Extractor = Callable[[Any], np.ndarray]
# One `[N, H, W, C]` array given as an image set is fed to the extractor this many images at
# a time: 10,000 images through the Inception at once would need ~100 GB of activations.
IMAGES_PER_BATCH = 64


def _batched(fn, *, mesh=None) -> Extractor:
  """Runs jitted `fn` on a host batch; with a mesh, pads it to the 'data' size and shards it."""
  if mesh is not None:
    mesh_lib.data_size(mesh)  # a mesh without a 'data' axis: said now, not at the first call
  def run(images):
    images = np.asarray(images)
    if mesh is None:
      return np.asarray(fn(images))
    n = images.shape[0]
    size = mesh_lib.data_size(mesh)
    padded = -(-n // size) * size
    if padded != n:
      images = np.concatenate([images, np.repeat(images[-1:], padded - n, axis=0)])
    return mesh_lib.to_host(fn(mesh_lib.shard_batch(images, mesh)))[:n]
  return run


def inception_extractor(variables, *, data_range: float = 255.0, mesh=None,
                        resize_input: bool = True) -> Extractor:
  """pool3 features `[B, 2048]` of RGB `[B, H, W, 3]` images with values in [0, data_range].

  Args:
    variables: from `inception_import.load_inception(path)` (pytorch-fid's .pth or our .npz).
    data_range: 255.0 for uint8 images (divided by it, as pytorch-fid's ToTensor does).
    mesh: optional `vision_core.mesh` mesh; batches are sharded over its 'data' axis.
    resize_input: resize to 299x299 first (keep True for comparable FID values).
  """
  data_range = checks.check_data_range(data_range, metric='inception_extractor')
  model = inception.FIDInceptionV3(resize_input=resize_input)

  @jax.jit
  def apply(images):
    return model.apply(variables, images.astype(jnp.float32) / data_range)

  def run(images):
    images = checks.as_array(images, metric='inception_extractor', name='input')
    images_lib.check_batch(images, name='inception_extractor input', channels=(3,))
    if data_range == 255.0:
      checks.check_float_levels(images, metric='inception_extractor', name='input')
    checks.check_within_range(images, data_range, metric='inception_extractor', name='input')
    return batched(images)
  batched = _batched(apply, mesh=mesh)  # (now: it checks the mesh)
  return run


def vit_extractor(model, params, *, mesh=None) -> Extractor:
  """Pre-logit features of our `VisionTransformer` for uint8 RGB `[B, H, W, 3]` images.

  Images are scaled with `vision_core.images.to_model_range` ([0, 255] -> [-1, 1]) and must
  already have the model's resolution.
  """
  @jax.jit
  def apply(images):
    x = (images.astype(jnp.float32) - 127.5) / 127.5
    return model.apply({'params': params}, x, train=False, return_prelogits=True)

  def run(images):
    images = checks.as_array(images, metric='vit_extractor', name='input')
    images_lib.check_batch(images, name='vit_extractor input', channels=(3,))
    checks.check_float_levels(images, metric='vit_extractor', name='input')
    checks.check_integer_levels(images, metric='vit_extractor', name='input')
    return batched(images)
  batched = _batched(apply, mesh=mesh)  # (now: it checks the mesh)
  return run


def pixel_extractor(images) -> np.ndarray:
  """Raw pixels as features: `[B, H, W, C]` -> `[B, H * W * C]` float64, values unchanged."""
  shape = np.shape(images)
  if len(shape) != 4:
    raise UserInputError(f'pixel_extractor: expected [B, H, W, C], got shape {shape}.')
  return np.asarray(images, np.float64).reshape(shape[0], -1)


def feature_stats(batches: Iterable[Any], extractor: Extractor) -> frechet.GaussianStats:
  """Streams `[B, H, W, C]` batches (or one such array) through `extractor` into float64
  mean/covariance."""
  stats = frechet.GaussianStats()
  # One array is split into batches, as in fid_from_images; iterating it would hand the
  # extractor single images, refused with a misleading 'add a batch axis'.
  for batch in _as_batches(batches):
    stats.update(extractor(batch))
  if stats.count < 2:
    raise UserInputError(f'feature_stats: FID needs at least 2 images, got {stats.count}.')
  return stats


def fid_from_images(batches_a: Iterable[Any], batches_b: Iterable[Any],
                    extractor: Extractor) -> float:
  """FID between two image sets, each an iterable of `[B, H, W, C]` batches (or one array,
  fed `IMAGES_PER_BATCH` images at a time).

  With `pixel_extractor` and fewer images than pixels, the exact low-rank route of
  `frechet.fid` is used on the stacked features instead of a [D, D] covariance.
  """
  batches_a, batches_b = _as_batches(batches_a), _as_batches(batches_b)
  if extractor is pixel_extractor:
    return frechet.fid(np.concatenate([extractor(b) for b in batches_a]),
                       np.concatenate([extractor(b) for b in batches_b]))
  return frechet.fid(feature_stats(batches_a, extractor), feature_stats(batches_b, extractor))


def _as_batches(images) -> Iterable[Any]:
  """One `[N, H, W, C]` array (numpy or JAX) -> its `IMAGES_PER_BATCH`-image slices; other
  iterables (of batches) as given."""
  if isinstance(images, (np.ndarray, jax.Array)) and images.ndim == 4:
    return [images[i:i + IMAGES_PER_BATCH] for i in range(0, max(len(images), 1),
                                                           IMAGES_PER_BATCH)]
  return images


def pixel_rows(image) -> np.ndarray:
  """One image `[H, W, C]` -> its rows `[H, W * C]` float64 (pixel-major, channel-minor)."""
  image = np.asarray(image, np.float64)
  return image.reshape(image.shape[0], -1)


def pixel_row_fid(a, b) -> np.ndarray:
  """The study's per-image FID: Frechet distance between the pixel rows of a[i] and b[i].

  Args:
    a: `[B, H, W, C]` originals, values as stored (uint8 levels 0..255 for 8-bit images).
    b: `[B, H, W, C]` reconstructions.

  Returns:
    `[B]` float64, >= 0; 0 for identical images. Rows are the samples (H of them) and the
    W * C values of a row the dimensions, so the covariances are rank-deficient whenever
    H <= W * C; the distance is computed exactly (float64, no `sqrtm`).
  """
  a, b = checks.as_pair(a, b, metric='pixel_row_fid')
  checks.check_pair(a, b, metric='pixel_row_fid', min_size=2)
  a, b = np.asarray(a), np.asarray(b)
  if not (np.isfinite(a).all() and np.isfinite(b).all()):
    raise UserInputError('pixel_row_fid: the images contain NaN or infinite values.')
  return np.array([frechet.fid(pixel_rows(x), pixel_rows(y)) for x, y in zip(a, b)])
