"""The Frechet distance refuses statistics that are not a mean and a covariance."""

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from vision_core.errors import UserInputError
from vit_jax import metrics


def _spectrum_matrix(eigenvalues, seed=0):
  """Symmetric `[d, d]` Q diag(w) Q^T with a random orthogonal Q (scipy's Haar sampler)."""
  q = scipy.stats.ortho_group.rvs(len(eigenvalues), random_state=seed)
  m = q @ np.diag(eigenvalues) @ q.T
  return 0.5 * (m + m.T)


def _stats(n, d, seed):
  x = np.random.default_rng(seed).gamma(2.0, size=(n, d)) + 3.0
  return x.mean(0), np.cov(x, rowvar=False)


def _sqrtm_reference(mu1, s1, mu2, s2):
  covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
  diff = mu1 - mu2
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def test_not_symmetric_is_refused_naming_the_argument():
  mu, s = _stats(50, 8, 0)
  bad = s.copy()
  bad[0, 5] += 0.5 * np.abs(s).max()
  with pytest.raises(UserInputError, match='sigma1 is not a covariance.*not symmetric'):
    metrics.frechet_distance(mu, bad, mu, s)
  with pytest.raises(UserInputError, match='sigma2 is not a covariance.*not symmetric'):
    metrics.frechet_distance(mu, s, mu, np.triu(s))  # half a matrix, e.g. a packed file


def test_indefinite_is_refused_naming_the_argument():
  mu = np.zeros(6)
  good = _spectrum_matrix([3.0, 2.0, 1.0, 0.5, 0.1, 0.01])
  indefinite = _spectrum_matrix([3.0, 2.0, 1.0, 0.5, 0.1, -0.2], seed=1)
  assert np.linalg.eigvalsh(indefinite)[0] < 0  # scipy/numpy agree it is not PSD
  with pytest.raises(UserInputError, match='sigma2 is not a covariance.*positive semi-def'):
    metrics.frechet_distance(mu, good, mu, indefinite)
  with pytest.raises(UserInputError, match='sigma1 is not a covariance.*positive semi-def'):
    metrics.frechet_distance(mu, -good, mu, good)  # a sign flip


def test_wrong_shapes_and_values_are_refused():
  mu, s = _stats(50, 8, 0)
  features = np.random.default_rng(0).normal(size=(50, 8))
  with pytest.raises(UserInputError, match=r'sigma1 has shape \(50, 8\), expected \(8, 8\)'):
    metrics.frechet_distance(mu, features, mu, s)  # the features instead of their covariance
  with pytest.raises(UserInputError, match=r'mu2 has shape \(7,\)'):
    metrics.frechet_distance(mu, s, mu[:7], s)
  with pytest.raises(UserInputError, match=r'sigma2 must have 2 axes'):
    metrics.frechet_distance(mu, s, mu, np.diag(s))
  nan = s.copy()
  nan[2, 2] = np.nan
  with pytest.raises(UserInputError, match='sigma2 contains NaN'):
    metrics.frechet_distance(mu, s, mu, nan)
  with pytest.raises(UserInputError, match='mu1 must be real numbers'):
    metrics.frechet_distance(mu.astype(complex), s, mu, s)


def test_legitimate_covariances_pass_and_results_are_unchanged():
  mu1, s1 = _stats(200, 8, 1)
  mu2, s2 = _stats(300, 8, 2)
  want = _sqrtm_reference(mu1, s1, mu2, s2)
  assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(want, rel=1e-9)
  # Asymmetry and negative eigenvalues at rounding level are accepted, and barely move it.
  nudged = s1 + 1e-12 * np.abs(s1).max() * np.triu(np.ones_like(s1), 1)
  assert metrics.frechet_distance(mu1, nudged, mu2, s2) == pytest.approx(want, rel=1e-9)
  tiny_negative = _spectrum_matrix([2.0, 1.0, 0.3, 0.0, 0.0, -1e-9], seed=3)
  metrics.frechet_distance(np.zeros(6), tiny_negative, np.zeros(6), tiny_negative)
  # Rank-deficient covariances from few samples, also rounded to float32, pass.
  for dtype in (np.float64, np.float32):
    mu_a, sa = _stats(10, 64, 4)
    mu_b, sb = _stats(12, 64, 5)
    value = metrics.frechet_distance(mu_a, sa.astype(dtype), mu_b, sb.astype(dtype))
    assert np.isfinite(value) and value > 0
  # A constant feature set (zero covariance) is a valid, degenerate covariance.
  metrics.frechet_distance(np.ones(4), np.zeros((4, 4)), np.ones(4), np.eye(4))


def test_loaded_statistics_are_checked_naming_file_and_key(tmp_path):
  mu, s = _stats(50, 8, 0)
  np.savez(tmp_path / 'ok.npz', mu=mu, sigma=s.astype(np.float32))  # pytorch-fid layout
  loaded = metrics.GaussianStats.load(tmp_path / 'ok.npz')
  np.testing.assert_allclose(loaded.cov, s, rtol=1e-6)
  np.savez(tmp_path / 'no_sigma.npz', mu=mu, cov=s)
  with pytest.raises(UserInputError, match=r"no_sigma.npz.*missing \['sigma'\]"):
    metrics.GaussianStats.load(tmp_path / 'no_sigma.npz')
  np.savez(tmp_path / 'indefinite.npz', mu=mu, sigma=s - 2 * np.eye(8) * np.abs(s).max())
  with pytest.raises(UserInputError, match='indefinite.npz: key sigma is not a covariance'):
    metrics.GaussianStats.load(tmp_path / 'indefinite.npz')
  np.savez(tmp_path / 'asym.npz', mu=mu, sigma=np.tril(s))
  with pytest.raises(UserInputError, match='asym.npz: key sigma .*not symmetric'):
    metrics.GaussianStats.load(tmp_path / 'asym.npz')
  np.savez(tmp_path / 'nan.npz', mu=np.full(8, np.nan), sigma=s)
  with pytest.raises(UserInputError, match='nan.npz: key mu contains NaN'):
    metrics.GaussianStats.load(tmp_path / 'nan.npz')
  np.savez(tmp_path / 'swapped.npz', mu=s, sigma=mu)  # keys swapped
  with pytest.raises(UserInputError, match='swapped.npz: key mu must have 1 axes'):
    metrics.GaussianStats.load(tmp_path / 'swapped.npz')
  np.savez(tmp_path / 'pickled.npz', mu=np.array([{'a': 1}], dtype=object), sigma=s)
  with pytest.raises(UserInputError, match='pickled.npz: key mu holds Python objects'):
    metrics.GaussianStats.load(tmp_path / 'pickled.npz')
  np.savez(tmp_path / 'count.npz', mu=mu, sigma=s, count=np.float64(2.5))
  with pytest.raises(UserInputError, match='count.npz: key count must be a non-negative'):
    metrics.GaussianStats.load(tmp_path / 'count.npz')
