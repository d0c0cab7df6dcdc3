"""FID feature extractors: raw pixel rows (the study's FID), ViT pre-logits, Inception on a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
import skimage.data

from vision_core import mesh as mesh_lib
from vision_core.errors import UserInputError
from vit_jax import metrics
from vit_jax import models_vit
from vit_jax.configs import models
from vit_jax.metrics import features


def _scipy_fid_of_rows(x, y):
  """The textbook formulation: np.cov of the rows and scipy sqrtm, in float64."""
  x, y = x.astype(np.float64), y.astype(np.float64)
  m1, m2 = x.mean(0), y.mean(0)
  s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
  return (m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_pixel_row_fid_is_the_frechet_distance_of_image_rows():
  image = skimage.data.astronaut()
  # Full rank (more rows than values per row): equals the scipy sqrtm formulation.
  a = image[:120:2, :8]  # 60 rows of 8 x 3 = 24 values
  b = np.clip(a.astype(int) + np.random.default_rng(0).integers(-20, 20, a.shape), 0, 255)
  b = b.astype(np.uint8)  # a uint8 / int64 pair is refused as mixed dtypes
  got = metrics.pixel_row_fid(a[None], b[None])
  assert got.shape == (1,)
  assert got[0] == pytest.approx(_scipy_fid_of_rows(a.reshape(60, 24), b.reshape(60, 24)),
                                 rel=1e-6)
  # The study's setting, rank-deficient (512 rows of 1536 values): finite, >= 0, symmetric,
  # 0 for identical images, and equal to the eigendecomposition route.
  full = image[None, :, :200]
  blurred = (full // 8 * 8).astype(np.uint8)
  pair = metrics.pixel_row_fid(np.concatenate([full, full]), np.concatenate([blurred, full]))
  assert np.isfinite(pair).all() and pair[0] > 0
  assert pair[1] == pytest.approx(0.0, abs=1e-6)
  assert metrics.pixel_row_fid(blurred, full)[0] == pytest.approx(pair[0], rel=1e-9)
  rows_a, rows_b = full[0].reshape(512, -1).astype(float), blurred[0].reshape(512, -1).astype(float)
  eig = metrics.frechet_distance(rows_a.mean(0), np.cov(rows_a, rowvar=False),
                                 rows_b.mean(0), np.cov(rows_b, rowvar=False))
  # The covariance route resolves the ~90 zero eigenvalues only to rounding noise (see
  # frechet.py); the row route is exact. They agree to that noise level.
  assert pair[0] == pytest.approx(eig, rel=2e-5)
  with pytest.raises(UserInputError, match='same shape'):
    metrics.pixel_row_fid(full, blurred[:, :100])


def test_pixel_extractor_fid_over_batches_equals_fid_of_all_features():
  rng = np.random.default_rng(1)
  a = rng.integers(0, 256, (10, 6, 5, 3)).astype(np.uint8)
  b = rng.integers(0, 200, (12, 6, 5, 3)).astype(np.uint8)
  whole = metrics.fid(a.reshape(10, -1), b.reshape(12, -1))
  streamed = metrics.fid_from_images([a[:4], a[4:]], [b[:5], b[5:]], metrics.pixel_extractor)
  assert streamed == pytest.approx(whole, rel=1e-9)
  # Streaming stats (any extractor) give the same number.
  stats = metrics.fid(metrics.feature_stats([a[:3], a[3:]], metrics.pixel_extractor),
                      metrics.feature_stats([b], metrics.pixel_extractor))
  assert stats == pytest.approx(whole, rel=1e-6)


def test_fid_from_images_takes_one_jax_array_as_the_set():
  rng = np.random.default_rng(2)
  a = rng.integers(0, 256, (10, 2, 2, 1)).astype(np.uint8)
  b = rng.integers(0, 200, (12, 2, 2, 1)).astype(np.uint8)
  want = metrics.fid(a.reshape(10, -1), b.reshape(12, -1))
  by_stats = lambda x: metrics.pixel_extractor(x)  # Not `pixel_extractor`: the stats route.
  for extractor in (metrics.pixel_extractor, by_stats):
    got = metrics.fid_from_images(jnp.asarray(a), jnp.asarray(b), extractor)
    assert got == pytest.approx(want, rel=1e-9)


def test_one_array_is_fed_to_the_extractor_in_bounded_batches(monkeypatch):
  """A whole image set as one array went through the extractor in one batch: 10,000 images
  at 299x299 through the Inception would not fit in memory."""
  rng = np.random.default_rng(4)
  a = rng.integers(0, 256, (130, 2, 2, 1)).astype(np.uint8)
  b = rng.integers(0, 200, (10, 2, 2, 1)).astype(np.uint8)
  sizes = []

  def recording(x):
    sizes.append(len(x))
    return metrics.pixel_extractor(x)
  want = metrics.fid(a.reshape(130, -1), b.reshape(10, -1))
  assert metrics.fid_from_images(a, b, recording) == pytest.approx(want, rel=1e-6)
  assert sizes == [64, 64, 2, 10]
  monkeypatch.setattr(features, 'IMAGES_PER_BATCH', 4)
  sizes.clear()
  assert metrics.feature_stats(jnp.asarray(b), recording).count == 10
  assert sizes == [4, 4, 2]


def test_vit_extractor_gives_the_models_prelogits():
  config = models.get_model_config('testing')
  model = models_vit.VisionTransformer(num_classes=5, **config)
  images = np.random.default_rng(2).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)))['params']
  got = metrics.vit_extractor(model, params)(images)
  want = model.apply({'params': params}, (images.astype(np.float32) - 127.5) / 127.5,
                     return_prelogits=True)
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-6, atol=1e-6)
  assert got.shape[0] == 3 and got.ndim == 2
  # Float 0..255 levels are the same images; [-1, 1] (generator output) would be black ones.
  np.testing.assert_allclose(metrics.vit_extractor(model, params)(images.astype(np.float32)),
                             got, rtol=1e-6, atol=1e-6)
  with pytest.raises(UserInputError, match=r'vit_extractor input: image 0 .*\[-1, 1\]'):
    metrics.vit_extractor(model, params)(images / 127.5 - 1)


def test_extractor_sharded_over_eight_devices_equals_single_device():
  config = models.get_model_config('testing')
  model = models_vit.VisionTransformer(num_classes=5, **config)
  params = model.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))['params']
  images = np.random.default_rng(3).integers(0, 256, (11, 16, 16, 3)).astype(np.uint8)
  mesh = mesh_lib.make_mesh((-1, 1))
  single = metrics.vit_extractor(model, params)(images)
  sharded = metrics.vit_extractor(model, params, mesh=mesh)(images)
  assert sharded.shape == single.shape  # 11 images padded to 16 for 8 devices, then cropped
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-6)
  with pytest.raises(UserInputError, match='3 channels'):
    metrics.vit_extractor(model, params)(images[..., :1])


def test_feature_stats_takes_one_array_as_the_set():
  """It iterated the array, handing the extractor single images, refused with 'a single
  image? add a batch axis' although a batch was passed (fid_from_images already wrapped it)."""
  x = np.random.default_rng(3).integers(0, 256, (7, 3, 2, 2)).astype(np.uint8)
  stats = metrics.feature_stats(x, metrics.pixel_extractor)
  rows = x.reshape(7, -1).astype(np.float64)
  assert stats.count == 7
  np.testing.assert_allclose(stats.mean, rows.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.cov, np.cov(rows, rowvar=False), rtol=1e-9, atol=1e-9)
