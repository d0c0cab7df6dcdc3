"""The Frechet distance between Gaussians fitted to feature sets (FID), exact in float64.

  d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2))

The trace of the matrix square root is computed without `scipy.linalg.sqrtm` (a general,
non-symmetric Schur method that is slow, and returns complex or NaN values when a covariance
is singular): for any factor S1 = A A^T (e.g. sqrt(S1), or Cholesky's L), A^T S2 A is
symmetric positive semi-definite with the same eigenvalues as S1 S2, so tr((S1 S2)^(1/2)) is
the sum of the square roots of its eigenvalues: a Cholesky factorisation, two matrix
products and one symmetric eigenvalue computation (no eigenvectors). A singular S1 (fewer
samples than dimensions) has no Cholesky factor; then pivoted Cholesky gives a rank-r factor
A [d, r] (and A^T S2 A is only [r, r]).
Eigenvalues that rounding makes slightly negative are clipped to 0, so rank-deficient
covariances stay finite and the distance non-negative.
(On singular covariances each exact-zero eigenvalue of S1 S2 comes back as rounding noise of
size eps * |S1 S2|, whose square root is not negligible: expect ~1e-6 relative error there.)

With the features at hand and fewer samples than dimensions, an even cheaper exact route:
with centred feature rows Xa [na, d], Xb [nb, d], the nonzero eigenvalues of Sa Sb are the
squared singular values of Xa Xb^T / sqrt((na - 1)(nb - 1)), so the trace is that matrix's
nuclear norm: an [na, nb] SVD instead of two [d, d] eigendecompositions. It works at the scale
of the square roots, so it stays accurate to ~1e-12 where the covariance route loses digits.
"""

from __future__ import annotations

import os
from typing import Union

import jax.numpy as jnp
import numpy as np

from vision_core import io as io_lib
from vision_core.errors import UserInputError


# Tolerances of the covariance checks, relative to the matrix's scale. Float rounding stays
# far below them (float64 covariances: ~1e-15; float32-rounded or float32-computed ones,
# rank-deficient included: ~1e-7, measured on 2048-d features), while a matrix that is not a
# covariance (a feature array, a corrupted or mis-keyed file) violates them by O(1).
SYMMETRY_RTOL = 1e-5
PSD_RTOL = 1e-5


def is_real(dtype) -> bool:
  """Booleans, integers or floats, bfloat16 included (ml_dtypes' floats have numpy kind 'V'
  and are unknown to np.floating, but a model computing in bf16 hands back such features)."""
  return dtype.kind in 'biuf' or bool(jnp.issubdtype(dtype, jnp.floating))


def real_float64(x, name: str, where: str) -> np.ndarray:
  """`x` as float64, refused unless real numbers: checked before the cast, which would drop
  imaginary parts with only a warning and fail on strings with a bare ValueError."""
  try:
    dtype = np.asarray(x).dtype
  except (TypeError, ValueError):
    dtype = np.dtype(object)
  if not is_real(dtype):
    raise UserInputError(f'{where}: {name} must be real numbers, got dtype {dtype}.')
  return np.asarray(x, dtype=np.float64)


def _as_float64(x, name: str, ndim: int, where: str = 'frechet_distance') -> np.ndarray:
  x = real_float64(x, name, where)
  if x.ndim != ndim:
    want = '[d]' if ndim == 1 else '[d, d]'
    raise UserInputError(
        f'{where}: {name} must have {ndim} axes ({want}), got shape {x.shape}.')
  if not np.isfinite(x).all():
    raise UserInputError(f'{where}: {name} contains NaN or infinite values.')
  return x


def check_covariance(sigma: np.ndarray, name: str, where: str = 'frechet_distance'
                     ) -> np.ndarray | None:
  """Raises `UserInputError` unless finite float64 `[d, d]` `sigma` is a covariance.

  Symmetric: max |S - S^T| <= SYMMETRY_RTOL * max |S|. Positive semi-definite: smallest
  eigenvalue >= -PSD_RTOL * largest |eigenvalue|; rank-deficient covariances (fewer samples
  than dimensions) and rounding-level negative eigenvalues pass.

  Returns the Cholesky factor of the symmetrised matrix when it has one (it is then positive
  definite and no eigenvalues are needed), else None.
  """
  if sigma.ndim != 2 or sigma.shape[0] != sigma.shape[1]:
    raise UserInputError(f'{where}: {name} must be a square [d, d] matrix, got {sigma.shape}.')
  scale = np.abs(sigma).max(initial=0.0)
  asymmetry = np.abs(sigma - sigma.T).max(initial=0.0)
  if asymmetry > SYMMETRY_RTOL * scale:
    raise UserInputError(
        f'{where}: {name} is not a covariance matrix: not symmetric (max |S - S^T| = '
        f'{asymmetry:.3g}, max |S| = {scale:.3g}).')
  sym = 0.5 * (sigma + sigma.T)
  try:
    return np.linalg.cholesky(sym)
  except np.linalg.LinAlgError:
    pass
  # Singular or indefinite: only here are eigenvalues needed (~0.5 s at d = 2048).
  w = np.linalg.eigvalsh(sym)
  largest = np.abs(w).max(initial=0.0)
  if w.size and w[0] < -PSD_RTOL * largest:
    raise UserInputError(
        f'{where}: {name} is not a covariance matrix: not positive semi-definite (smallest '
        f'eigenvalue {w[0]:.3g}, largest magnitude {largest:.3g}).')
  return None


def psd_factor(sigma: np.ndarray, *, cholesky: bool = True) -> np.ndarray:
  """A `[d, r]` factor `a` with `a a^T = sigma` (to rounding) of a symmetric PSD matrix.

  Cholesky when positive definite; for a singular (rank-deficient) covariance, Cholesky with
  complete pivoting (LAPACK `pstrf`), which stops at the numerical rank r. Both are ~10-50x
  cheaper than an eigendecomposition with vectors (`cholesky=False`: `v sqrt(max(w, 0))`).
  """
  if not cholesky:
    w, v = np.linalg.eigh(sigma)
    return v * np.sqrt(np.clip(w, 0.0, None))
  try:
    return np.linalg.cholesky(sigma)
  except np.linalg.LinAlgError:
    pass
  from scipy.linalg import lapack  # pylint: disable=g-import-not-at-top
  c, piv, rank, info = lapack.dpstrf(sigma, lower=1)
  if info < 0:
    raise ValueError(f'LAPACK dpstrf failed (info={info}).')
  factor = np.zeros((sigma.shape[0], rank))
  factor[piv - 1] = np.tril(c)[:, :rank]  # P^T S P = L L^T  ->  S = (P L)(P L)^T
  return factor


def trace_sqrt_product(sigma1, sigma2, *, cholesky: bool = True, factor1=None) -> float:
  """tr((S1 S2)^(1/2)) for symmetric PSD `[d, d]` matrices, via symmetric eigenvalues.

  With S1 = a a^T, the eigenvalues of S1 S2 are those of the symmetric PSD a^T S2 a, so only
  the eigenvalues (no vectors) of one symmetric matrix are needed. `factor1`: such an `a`
  when already computed (e.g. by `check_covariance`).
  """
  s2 = 0.5 * (sigma2 + sigma2.T)
  a = factor1
  if a is None:
    a = psd_factor(0.5 * (sigma1 + sigma1.T), cholesky=cholesky)
  m = a.T @ s2 @ a
  m = 0.5 * (m + m.T)
  return float(np.sqrt(np.clip(np.linalg.eigvalsh(m), 0.0, None)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Squared Frechet distance between N(mu1, sigma1) and N(mu2, sigma2), in float64.

  Args:
    mu1: `[d]` mean of the first feature set.
    sigma1: `[d, d]` covariance of the first set (symmetric positive semi-definite).
    mu2: `[d]` mean of the second set.
    sigma2: `[d, d]` covariance of the second set.

  Returns:
    The distance (FID when the features are Inception pool3), >= 0.

  Raises:
    UserInputError: naming the argument, for wrong shapes, NaN/inf values, or a sigma that
      is not a covariance (see `check_covariance` for the tolerances).
  """
  mu1, mu2 = _as_float64(mu1, 'mu1', 1), _as_float64(mu2, 'mu2', 1)
  sigma1, sigma2 = _as_float64(sigma1, 'sigma1', 2), _as_float64(sigma2, 'sigma2', 2)
  d = mu1.shape[0]
  for name, shape in (('mu2', mu2.shape), ('sigma1', sigma1.shape), ('sigma2', sigma2.shape)):
    want = (d,) if name == 'mu2' else (d, d)
    if shape != want:
      raise UserInputError(
          f'frechet_distance: {name} has shape {shape}, expected {want} to match mu1 {(d,)}.')
  factor1 = check_covariance(sigma1, 'sigma1')
  check_covariance(sigma2, 'sigma2')
  diff = mu1 - mu2
  value = (diff @ diff + np.trace(sigma1) + np.trace(sigma2)
           - 2.0 * trace_sqrt_product(sigma1, sigma2, factor1=factor1))
  return max(float(value), 0.0)


class GaussianStats:
  """Streaming mean and covariance of feature rows, accumulated in float64.

  Batches are merged with Chan et al.'s pairwise update (batch mean and centred scatter, then
  a rank-one correction), which stays accurate when the mean is large next to the spread,
  unlike summing x and x x^T. The covariance uses n - 1 (as `np.cov` and pytorch-fid).

  Usage: `stats = GaussianStats(); for f in batches: stats.update(f)`; then `stats.mean`,
  `stats.cov`, `fid(stats_a, stats_b)`; `stats.save(path)` / `GaussianStats.load(path)`.
  """

  def __init__(self, dim: int | None = None):
    self.count = 0
    self.dim = dim
    self._mean = None
    self._scatter = None  # sum of (x - mean)(x - mean)^T
    self._loaded_cov = None  # statistics read from a file that has no row count

  def update(self, features) -> 'GaussianStats':
    """Adds `[n, d]` feature rows (any float dtype)."""
    x = _as_float64(features, 'features', np.ndim(features), 'GaussianStats.update')
    if x.ndim != 2:
      raise UserInputError(f'GaussianStats.update: features must be [n, d], got shape {x.shape}.')
    if self.dim is not None and x.shape[1] != self.dim:
      raise UserInputError(
          f'GaussianStats.update: features have {x.shape[1]} dimensions, expected {self.dim}.')
    if not np.isfinite(x).all():
      raise UserInputError('GaussianStats.update: features contain NaN or infinite values.')
    if x.shape[0] == 0:
      return self
    mean = x.mean(axis=0)
    centred = x - mean
    self._merge(x.shape[0], mean, centred.T @ centred)
    return self

  def merge(self, other: 'GaussianStats') -> 'GaussianStats':
    """Adds another accumulator's rows (e.g. from another host or shard)."""
    if other._loaded_cov is not None:
      raise _no_count_error()
    if other.count:
      self._merge(other.count, other._mean, other._scatter)
    return self

  def _merge(self, n, mean, scatter):
    if self._loaded_cov is not None:
      raise _no_count_error()
    if self.dim is not None and mean.shape[0] != self.dim:
      raise UserInputError(
          f'GaussianStats.merge: the other statistics have {mean.shape[0]} dimensions, '
          f'these have {self.dim}.')
    self.dim = mean.shape[0]
    if not self.count:
      self.count, self._mean, self._scatter = n, mean.copy(), scatter.copy()
      return
    total = self.count + n
    delta = mean - self._mean
    self._scatter = self._scatter + scatter + np.outer(delta, delta) * (self.count * n / total)
    self._mean = self._mean + delta * (n / total)
    self.count = total

  @property
  def mean(self) -> np.ndarray:
    """`[d]` float64."""
    if self._mean is None:
      raise UserInputError('GaussianStats: no features were added.')
    return self._mean

  @property
  def cov(self) -> np.ndarray:
    """`[d, d]` float64 sample covariance (n - 1 in the denominator)."""
    if self._loaded_cov is not None:
      return self._loaded_cov
    if self.count < 2:
      raise UserInputError(
          f'GaussianStats: a covariance needs at least 2 feature rows, got {self.count}.')
    return self._scatter / (self.count - 1)

  def save(self, path: str | os.PathLike, *, force: bool = False) -> None:
    """Writes `mu`, `sigma` (pytorch-fid's keys) and `count` to an .npz file, atomically."""
    if not force and io_lib.exists(path):
      # Our own message: atomic_write's names its `overwrite=` argument, which save lacks.
      raise UserInputError(
          f'{os.fspath(path)} already exists; refusing to overwrite it (pass force=True to '
          'replace it).')
    with io_lib.atomic_write(path, overwrite=force) as f:  # still refuses one made meanwhile
      np.savez(f, mu=self.mean, sigma=self.cov, count=np.int64(self.count))

  @classmethod
  def load(cls, path: str | os.PathLike) -> 'GaussianStats':
    """Reads an .npz with `mu` and `sigma` (ours, or pytorch-fid's precomputed statistics).

    Raises `UserInputError` naming the file (and key) when a key is missing or holds
    something other than a finite `[d]` mean and a `[d, d]` covariance (symmetric PSD).
    """
    path = os.fspath(path)
    try:
      archive = np.load(io_lib.readable(path), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
      # np.load falls back to unpickling what is neither .npy nor .npz, and then refuses
      # with a message about pickled data, whatever the file holds (text, an image, ...).
      if isinstance(e, FileNotFoundError):
        raise
      raise UserInputError(
          f'{path}: not an .npz archive of FID statistics (keys mu and sigma); numpy could '
          f'not read it ({e}).') from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a single .npy array
      raise UserInputError(
          f'{path}: a single array of shape {np.shape(archive)} (.npy), not an .npz archive '
          'with keys mu and sigma; for feature rows [n, d] use '
          'GaussianStats().update(np.load(path)).')
    with archive as data:
      missing = [k for k in ('mu', 'sigma') if k not in data.files]
      if missing:
        raise UserInputError(
            f'{path}: FID statistics need keys mu and sigma; missing {missing}, found '
            f'{sorted(data.files)}.')
      mu, sigma = _read_key(data, 'mu', path), _read_key(data, 'sigma', path)
      count = _read_key(data, 'count', path) if 'count' in data.files else np.asarray(0)
    mu = _as_float64(mu, 'key mu', 1, path)
    sigma = _as_float64(sigma, 'key sigma', 2, path)
    if sigma.shape != (mu.shape[0],) * 2:
      raise UserInputError(
          f'{path}: mu must be [d] and sigma [d, d], got {mu.shape} and {sigma.shape}.')
    check_covariance(sigma, 'key sigma', path)
    if count.shape != () or count.dtype.kind not in 'iu' or int(count) < 0:
      raise UserInputError(
          f'{path}: key count must be a non-negative integer, got {count.dtype} {count!r}.')
    stats = cls(mu.shape[0])
    stats._mean = mu
    count = int(count)
    if count >= 2:
      stats.count, stats._scatter = count, sigma * (count - 1)
    else:
      stats.count, stats._loaded_cov = count, sigma
    return stats


def _read_key(data, key: str, path: str) -> np.ndarray:
  """`data[key]`, turning numpy's pickle refusal into a message naming file and key."""
  try:
    return data[key]
  except ValueError as e:  # an object array: numpy refuses to unpickle it (allow_pickle=False)
    raise UserInputError(
        f'{path}: key {key} holds Python objects (pickled), not a numeric array; it is not '
        f'loaded for safety ({e}).') from None


def _no_count_error() -> UserInputError:
  return UserInputError(
      'GaussianStats: statistics loaded from a file without a row count (e.g. pytorch-fid '
      '.npz files) cannot take more features or be merged.')


Features = Union[np.ndarray, GaussianStats]


def fid(features_a: Features, features_b: Features) -> float:
  """Frechet distance between two feature sets: `[n, d]` arrays or `GaussianStats`.

  With two arrays and fewer rows than dimensions in either, the exact nuclear-norm route is
  used (see the module docstring); otherwise the covariance route. Both are float64.
  """
  if isinstance(features_a, GaussianStats) or isinstance(features_b, GaussianStats):
    stats = [f if isinstance(f, GaussianStats) else GaussianStats().update(f)
             for f in (features_a, features_b)]
    return frechet_distance(stats[0].mean, stats[0].cov,
                            stats[1].mean, stats[1].cov)
  xa = _features(features_a, 'features_a')
  xb = _features(features_b, 'features_b')
  if xa.shape[1] != xb.shape[1]:
    raise UserInputError(
        f'fid: features_a has {xa.shape[1]} dimensions, features_b has {xb.shape[1]}.')
  (na, d), nb = xa.shape, xb.shape[0]
  if min(na, nb) >= d:
    # atleast_2d: np.cov returns a 0-d scalar for one feature dimension (d = 1).
    return frechet_distance(xa.mean(0), np.atleast_2d(np.cov(xa, rowvar=False)),
                            xb.mean(0), np.atleast_2d(np.cov(xb, rowvar=False)))
  ca, cb = xa - xa.mean(0), xb - xb.mean(0)
  diff = xa.mean(0) - xb.mean(0)
  trace_a = np.einsum('ij,ij->', ca, ca) / (na - 1)
  trace_b = np.einsum('ij,ij->', cb, cb) / (nb - 1)
  nuclear = np.linalg.svd(ca @ cb.T, compute_uv=False).sum() / np.sqrt((na - 1) * (nb - 1))
  return max(float(diff @ diff + trace_a + trace_b - 2.0 * nuclear), 0.0)


def _features(x, name: str) -> np.ndarray:
  x = real_float64(x, name, 'fid')
  if x.ndim != 2:
    raise UserInputError(f'fid: {name} must be [n, d] feature rows, got shape {x.shape}.')
  if x.shape[0] < 2:
    raise UserInputError(f'fid: {name} needs at least 2 rows for a covariance, got {x.shape[0]}.')
  if not np.isfinite(x).all():
    raise UserInputError(f'fid: {name} contains NaN or infinite values.')
  return x
