"""SSIM and MS-SSIM on `[B, H, W, C]` batches, one value per image, jit-compiled.

Conventions (the ones of scikit-image's `structural_similarity(..., gaussian_weights=True,
sigma=1.5, use_sample_covariance=False, channel_axis=-1)` and of Wang et al. 2003/2004):
  * an 11x11 Gaussian window with sigma 1.5, K1 = 0.01, K2 = 0.03, C = (K * data_range)^2;
  * local statistics with weights summing to 1 (population, not sample, covariance);
  * the SSIM map is averaged over the valid region (window fully inside the image) and over the
    channels, each channel scored on its own (no colour conversion).
MS-SSIM uses 5 scales with weights (0.0448, 0.2856, 0.3001, 0.2363, 0.1333), 2x2 average
pooling between scales (an odd last row/column is dropped), the contrast-structure mean at the
first four scales and the full SSIM at the last, each clipped at 0 before the power (as
TensorFlow's `ssim_multiscale`), per channel, then averaged over channels.

Inputs may be batches sharded over the mesh's 'data' axis (`vision_core.mesh.shard_batch`):
each device then scores its own images. Images are processed in cache-sized chunks
(`batching.map_images`), one at a time for 512x512x3.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from vit_jax.metrics import batching
from vit_jax.metrics import checks
from vit_jax.metrics import filters
from vit_jax.metrics import pixel

WINDOW = 11
SIGMA = 1.5
K1, K2 = 0.01, 0.03
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIZE = WINDOW * 2**(len(MS_SSIM_WEIGHTS) - 1)  # 176: the last scale fits a window.


def _mean_hw(x: jax.Array) -> jax.Array:
  """`[B, C, H, W]` -> `[B, C]`, summing rows first for float32 accuracy."""
  return x.mean(axis=-1).mean(axis=-1)


def _ssim_and_cs(a: jax.Array, b: jax.Array, data_range: float):
  """Per-channel mean SSIM and contrast-structure of `[B, C, H, W]` float32 maps: `[B, C]` x 2."""
  c1 = (K1 * data_range)**2
  c2 = (K2 * data_range)**2
  # Variances are E[x^2] - E[x]^2: in float32 that cancels badly when the mean is large next to
  # the spread. Subtracting each channel's mean first keeps agreement with float64 to ~1e-6.
  center = _mean_hw(a)[..., None, None]
  a0, b0 = a - center, b - center
  # Four maps suffice: only var_a + var_b and cov_ab enter the formula.
  maps = jnp.stack([a0, b0, a0 * a0 + b0 * b0, a0 * b0], axis=1)
  mu_a0, mu_b0, sq_sum, prod = jnp.unstack(
      filters.valid_filter(maps, filters.gaussian_taps(WINDOW, SIGMA)), axis=1)
  var_sum = sq_sum - mu_a0 * mu_a0 - mu_b0 * mu_b0
  cov = prod - mu_a0 * mu_b0
  mu_a, mu_b = mu_a0 + center, mu_b0 + center
  luminance = (2 * mu_a * mu_b + c1) / (mu_a * mu_a + mu_b * mu_b + c1)
  cs = (2 * cov + c2) / (var_sum + c2)
  return _mean_hw(luminance * cs), _mean_hw(cs)


def _channels_first(x: jax.Array) -> jax.Array:
  return jnp.moveaxis(x.astype(jnp.float32), -1, 1)


def _ssim_values(a, b, data_range):
  """`[k, H, W, C]` pair -> `[k]` SSIM."""
  ssim_c, _ = _ssim_and_cs(_channels_first(a), _channels_first(b), data_range)
  return ssim_c.mean(axis=-1)


@functools.partial(jax.jit, static_argnames=('data_range', 'placement'))
def _ssim(a, b, data_range, placement=None):
  values = batching.map_images(functools.partial(_ssim_values, data_range=data_range), a, b,
                               placement)
  return values, pixel.finite_flags(a, b)


def _pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling of `[B, C, H, W]`, dropping an odd last row/column."""
  bsz, c, h, w = x.shape
  x = x[:, :, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(bsz, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))


def _ms_ssim_values(a, b, data_range):
  """`[k, H, W, C]` pair -> `[k]` MS-SSIM."""
  a, b = _channels_first(a), _channels_first(b)
  weights = jnp.asarray(MS_SSIM_WEIGHTS, jnp.float32)
  factors = []
  for scale in range(len(MS_SSIM_WEIGHTS)):
    ssim_c, cs_c = _ssim_and_cs(a, b, data_range)
    last = scale == len(MS_SSIM_WEIGHTS) - 1
    factors.append(jax.nn.relu(ssim_c if last else cs_c))
    if not last:
      a, b = _pool2(a), _pool2(b)
  per_channel = jnp.prod(jnp.stack(factors, axis=-1)**weights, axis=-1)  # [k, C]
  return per_channel.mean(axis=-1)


@functools.partial(jax.jit, static_argnames=('data_range', 'placement'))
def _ms_ssim(a, b, data_range, placement=None):
  values = batching.map_images(functools.partial(_ms_ssim_values, data_range=data_range), a,
                               b, placement)
  return values, pixel.finite_flags(a, b)


def ssim(a, b, data_range: float | None = None) -> jax.Array:
  """Structural similarity per image (Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03).

  Equals `skimage.metrics.structural_similarity(a[i], b[i], gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=data_range, channel_axis=-1)` to ~1e-6.

  Args:
    a: `[B, H, W, C]` reference images (any real dtype; computed in float32), H, W >= 11.
    b: `[B, H, W, C]` images compared with them, of a's dtype (or another float dtype).
    data_range: max - min of the value range: 1.0 for [0, 1] floats, 255.0 for 0..255.
      Required unless both batches are uint8 (then 255.0): float and wider integer dtypes
      do not say which range they hold.

  Returns:
    `[B]` float32 in [-1, 1]; 1 for identical images.
  """
  a, b = checks.as_pair(a, b, metric='ssim')
  checks.check_pair(a, b, metric='ssim', min_size=WINDOW)
  data_range = checks.resolve_data_range(a, b, data_range, metric='ssim')
  checks.check_span(a, b, data_range, metric='ssim')
  values, finite = _ssim(a, b, data_range, batching.data_axis(a))
  checks.raise_if_not_finite(finite, metric='ssim')
  return values


def ms_ssim(a, b, data_range: float | None = None) -> jax.Array:
  """Multi-scale SSIM per image (5 scales, weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333).

  Args:
    a: `[B, H, W, C]` reference images, H, W >= 176 (the 5th scale must fit an 11x11 window).
    b: `[B, H, W, C]` images compared with them, of a's dtype (or another float dtype).
    data_range: max - min of the value range: 1.0 for [0, 1] floats, 255.0 for 0..255.
      Required unless both batches are uint8 (then 255.0): float and wider integer dtypes
      do not say which range they hold.

  Returns:
    `[B]` float32 in [0, 1]; 1 for identical images.
  """
  a, b = checks.as_pair(a, b, metric='ms_ssim')
  checks.check_pair(a, b, metric='ms_ssim', min_size=MS_SSIM_MIN_SIZE)
  data_range = checks.resolve_data_range(a, b, data_range, metric='ms_ssim')
  checks.check_span(a, b, data_range, metric='ms_ssim')
  values, finite = _ms_ssim(a, b, data_range, batching.data_axis(a))
  checks.raise_if_not_finite(finite, metric='ms_ssim')
  return values
