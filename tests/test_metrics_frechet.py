"""The Frechet distance against scipy's sqrtm formulation, rank-deficient stability, streaming."""

import ml_dtypes
import numpy as np
import pytest
import scipy.linalg

from vision_core.errors import UserInputError
from vit_jax import metrics
from vit_jax.metrics import frechet


def _scipy_frechet(mu1, s1, mu2, s2):
  """The formulation of pytorch-fid / the original TTUR code: scipy sqrtm of S1 S2."""
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def _feature_sets(n_a, n_b, d, seed=0):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d, d)) / np.sqrt(d)
  xa = rng.gamma(2.0, size=(n_a, d)) @ mix + 5.0  # correlated, skewed, offset like activations
  xb = (rng.gamma(2.2, size=(n_b, d)) @ mix) * 1.1 + 4.8
  return xa, xb


@pytest.mark.parametrize('d', [16, 128])
def test_matches_scipy_sqrtm_on_full_rank_features(d):
  xa, xb = _feature_sets(4 * d, 5 * d, d)
  mu1, s1 = xa.mean(0), np.cov(xa, rowvar=False)
  mu2, s2 = xb.mean(0), np.cov(xb, rowvar=False)
  want = _scipy_frechet(mu1, s1, mu2, s2)
  assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-6)
  # Both factorisations (Cholesky for positive definite, eigh for singular) agree.
  assert frechet.trace_sqrt_product(s1, s2, cholesky=False) == pytest.approx(
      frechet.trace_sqrt_product(s1, s2), rel=1e-9)
  assert metrics.fid(xa, xb) == pytest.approx(want, rel=1e-6)
  # Nearby distributions: the distance is small and cancellation is worst.
  xc = xa + np.random.default_rng(3).normal(0, 0.05, xa.shape)
  near = _scipy_frechet(mu1, s1, xc.mean(0), np.cov(xc, rowvar=False))
  assert metrics.fid(xa, xc) == pytest.approx(near, rel=1e-6)


def test_rank_deficient_is_finite_and_non_negative():
  xa, xb = _feature_sets(20, 30, 64, seed=1)  # n < d: both covariances singular
  s1, s2 = np.cov(xa, rowvar=False), np.cov(xb, rowvar=False)
  value = metrics.frechet_distance(xa.mean(0), s1, xb.mean(0), s2)
  assert np.isfinite(value) and value >= 0
  # The nuclear-norm route on the raw rows is exact: it agrees with the eigen route.
  assert metrics.fid(xa, xb) == pytest.approx(value, rel=1e-6)
  # Identical sets: 0, never a small negative number or NaN.
  same = metrics.frechet_distance(xa.mean(0), s1, xa.mean(0), s1)
  assert 0.0 <= same < 1e-6 * np.trace(s1)
  assert 0.0 <= metrics.fid(xa, xa) < 1e-6 * np.trace(s1)
  # Zero covariance (a constant feature set) is fine too.
  const = np.ones((5, 64))
  assert metrics.fid(const, const) == 0.0


def test_streaming_stats_equal_batch_stats_and_survive_a_large_offset(tmp_path):
  rng = np.random.default_rng(2)
  # A large mean next to a unit spread: a naive sum of x x^T would cancel catastrophically.
  x = (rng.normal(size=(1000, 32)) + 1e4).astype(np.float32)
  stats = metrics.GaussianStats()
  for start in range(0, 1000, 37):
    stats.update(x[start:start + 37])  # float32 features, as a network gives them
  x = x.astype(np.float64)
  np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
  np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
  halves = metrics.GaussianStats().update(x[:400]).merge(metrics.GaussianStats().update(x[400:]))
  np.testing.assert_allclose(halves.cov, np.cov(x, rowvar=False), rtol=1e-9, atol=1e-12)
  path = tmp_path / 'stats.npz'
  stats.save(path)
  loaded = metrics.GaussianStats.load(path)
  assert loaded.count == 1000
  np.testing.assert_array_equal(loaded.cov, stats.cov)
  with pytest.raises(UserInputError, match='already exists'):
    stats.save(path)
  # pytorch-fid's own .npz layout: mu and sigma only.
  np.savez(tmp_path / 'ptfid.npz', mu=stats.mean, sigma=stats.cov)
  ptfid = metrics.GaussianStats.load(tmp_path / 'ptfid.npz')
  assert metrics.fid(ptfid, x) == pytest.approx(0.0, abs=1e-6)
  with pytest.raises(UserInputError, match='cannot take more features'):
    ptfid.update(x)


def test_bad_input_is_a_clear_error(tmp_path):
  mu, s = np.zeros(4), np.eye(4)
  with pytest.raises(UserInputError, match='sigma2 has shape'):
    metrics.frechet_distance(mu, s, mu, np.eye(3))
  with pytest.raises(UserInputError, match='mu1 contains NaN'):
    metrics.frechet_distance(np.full(4, np.nan), s, mu, s)
  with pytest.raises(UserInputError, match='4 dimensions'):
    metrics.fid(np.zeros((5, 4)), np.zeros((5, 3)))
  with pytest.raises(UserInputError, match='at least 2 rows'):
    metrics.fid(np.zeros((1, 4)), np.zeros((5, 4)))
  with pytest.raises(UserInputError, match=r'\[n, d\]'):
    metrics.GaussianStats().update(np.zeros(4))
  np.savez(tmp_path / 'bad.npz', mean=mu)
  with pytest.raises(UserInputError, match='bad.npz.*mu and sigma'):
    metrics.GaussianStats.load(tmp_path / 'bad.npz')


def test_merge_of_different_dimensions_is_a_clear_error():
  rng = np.random.default_rng(0)
  a = frechet.GaussianStats().update(rng.normal(size=(4, 3)))
  b = frechet.GaussianStats().update(rng.normal(size=(4, 5)))
  with pytest.raises(UserInputError, match='5 dimensions, these have 3'):
    a.merge(b)
  # An accumulator declared with a dimension refuses other statistics before any update.
  with pytest.raises(UserInputError, match='5 dimensions, these have 3'):
    frechet.GaussianStats(3).merge(b)
  assert a.count == 4 and a.mean.shape == (3,)  # Left unchanged.


def test_files_that_are_not_statistics_archives_are_a_clear_error(tmp_path):
  (tmp_path / 'text.npz').write_text('mu,sigma\n1,2\n')
  with pytest.raises(UserInputError, match=r'text\.npz: not an \.npz archive'):
    metrics.GaussianStats.load(tmp_path / 'text.npz')
  (tmp_path / 'empty.npz').write_bytes(b'')
  with pytest.raises(UserInputError, match=r'empty\.npz: not an \.npz archive'):
    metrics.GaussianStats.load(tmp_path / 'empty.npz')
  # Feature rows saved with np.save: numpy returns the array, not an archive.
  np.save(tmp_path / 'features.npy', np.zeros((10, 4)))
  with pytest.raises(UserInputError, match=r'features\.npy: a single array of shape \(10, 4\)'):
    metrics.GaussianStats.load(tmp_path / 'features.npy')
  with pytest.raises(FileNotFoundError):
    metrics.GaussianStats.load(tmp_path / 'missing.npz')


def test_save_refusal_names_the_force_argument(tmp_path):
  stats = metrics.GaussianStats().update(np.random.default_rng(0).normal(size=(5, 3)))
  path = tmp_path / 'stats.npz'
  stats.save(path)
  with pytest.raises(UserInputError, match=r'already exists.*pass force=True'):
    stats.save(path)
  stats.update(np.ones((1, 3)))
  stats.save(path, force=True)  # The argument the message names does replace the file.
  assert metrics.GaussianStats.load(path).count == 6


def test_feature_rows_that_are_not_real_numbers_are_refused():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 3))
  # Complex features used to lose their imaginary part with a ComplexWarning and give a
  # number; GaussianStats and frechet_distance already refused them.
  with pytest.raises(UserInputError, match='features_a must be real numbers, got dtype complex'):
    metrics.fid(x + 1j * rng.normal(size=x.shape), x)
  with pytest.raises(UserInputError, match='features_b must be real numbers, got dtype <U'):
    metrics.fid(x, [['a', 'b', 'c']] * 10)
  assert metrics.fid(x, x.astype(np.float32).tolist()) == pytest.approx(0.0, abs=1e-6)
  bf16 = x.astype(ml_dtypes.bfloat16)  # a real float dtype of kind 'V': still accepted
  assert metrics.fid(bf16, x) == pytest.approx(metrics.fid(bf16.astype(np.float64), x))


def test_bfloat16_features_and_statistics_are_accepted():
  """GaussianStats.update and frechet_distance refused bf16 ('must be real numbers, got dtype
  bfloat16': numpy gives ml_dtypes' floats kind 'V'); bf16 features are what a ViT or
  Inception run in bf16 returns. They count as their float64 values."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  x = rng.normal(size=(50, 4)).astype(ml_dtypes.bfloat16)
  y = rng.normal(size=(40, 4))
  exact = x.astype(np.float64)
  stats = metrics.GaussianStats().update(jnp.asarray(x))
  np.testing.assert_allclose(stats.cov, np.cov(exact, rowvar=False), rtol=1e-12)
  mu, s = y.mean(0), np.cov(y, rowvar=False)
  want = _scipy_frechet(exact.mean(0), np.cov(exact, rowvar=False), mu, s)
  assert metrics.fid(stats, y) == pytest.approx(want, rel=1e-9)
  got = metrics.frechet_distance(exact.mean(0).astype(ml_dtypes.bfloat16),
                                 np.eye(4, dtype=ml_dtypes.bfloat16), mu, s)
  assert got == pytest.approx(_scipy_frechet(exact.mean(0).astype(ml_dtypes.bfloat16)
                                             .astype(np.float64), np.eye(4), mu, s), rel=1e-9)


def test_one_dimensional_features():
  """d = 1 (one score per image): np.cov returns a 0-d scalar there, and fid failed with
  'sigma1 must have 2 axes', an argument the caller never passed. For 1-D Gaussians the
  distance is (m1 - m2)^2 + (s1 - s2)^2 with the standard deviations s."""
  rng = np.random.default_rng(5)
  a, b = rng.normal(0, 1, size=(30, 1)), rng.normal(2, 3, size=(40, 1))
  want = ((a.mean() - b.mean())**2 + (a.std(ddof=1) - b.std(ddof=1))**2)
  assert metrics.fid(a, b) == pytest.approx(want, rel=1e-12)
  assert metrics.fid(metrics.GaussianStats().update(a), b) == pytest.approx(want, rel=1e-12)
  images = rng.integers(0, 256, (6, 1, 1, 1)).astype(np.uint8)  # pixel features, d = 1
  assert metrics.fid_from_images(images, images[::-1], metrics.pixel_extractor) == (
      pytest.approx(0.0, abs=1e-9))
