"""Pixel-wise metrics on `[B, H, W, C]` batches: mean squared error and PSNR, one value per image.

Both are jit-compiled and run on batches sharded over the mesh's 'data' axis (pass arrays placed
with `vision_core.mesh.shard_batch`); the result is sharded the same way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.metrics import checks


def mean_per_image(x: jax.Array) -> jax.Array:
  """Mean over all but the batch axis of `[B, ...]`, summed in two stages for float32 accuracy.

  One long float32 sum over ~10^6 values loses about 5 digits; summing each row first and then
  the row sums keeps the result within ~1e-7 relative of a float64 mean.
  """
  rows = x.reshape(x.shape[0], x.shape[1], -1).sum(axis=-1)
  return rows.sum(axis=-1) / (x.size // x.shape[0])


def finite_flags(a: jax.Array, b: jax.Array) -> jax.Array:
  """`[2]` booleans: whether every value of a (then b) is finite."""
  return jnp.stack([jnp.isfinite(a).all(), jnp.isfinite(b).all()])


def _needs_host_difference(a, b) -> bool:
  """Whether a host pair holds values that float32 cannot represent exactly (float64, int32+).

  Casting such inputs to float32 before subtracting rounds each value to ~6e-8 relative, so
  near-identical float64 images would get the MSE of that rounding noise, or 0 when both
  round alike (measured against scikit-image in docs/metrics.md). Their difference, taken in
  float64 on the host, is small and keeps its relative precision when cast to float32.
  """
  if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
    return False
  return any(x.dtype.itemsize > 4 or (x.dtype.kind in 'iu' and x.dtype.itemsize == 4)
             for x in (a, b))


def _scaled_squares(d: jax.Array) -> tuple[jax.Array, jax.Array]:
  """`[B, ...]` differences -> (`[B]` mean of (d / s)^2, `[B]` scale s = max |d| per image).

  Scaling by the largest difference keeps the float32 squares away from underflow (tiny
  differences, whose squares would flush to 0) and overflow (huge float values).
  """
  flat = jnp.abs(d).reshape(d.shape[0], -1)
  scale = flat.max(axis=-1)
  safe = jnp.where(scale > 0, scale, 1.0)
  shape = (-1,) + (1,) * (d.ndim - 1)
  return mean_per_image(jnp.square(d / safe.reshape(shape))), scale


def _difference(a, b):
  """`a - b` in float32, subtracting in float64 first where the inputs are float64 (x64 mode)."""
  dtype = jnp.promote_types(a.dtype, b.dtype)
  if jnp.issubdtype(dtype, jnp.floating) and jnp.finfo(dtype).bits > 32:
    return (a.astype(dtype) - b.astype(dtype)).astype(jnp.float32)
  return a.astype(jnp.float32) - b.astype(jnp.float32)


@jax.jit
def _mse_parts(a, b):
  scaled, scale = _scaled_squares(_difference(a, b))
  return scaled, scale, finite_flags(a, b)


@jax.jit
def _mse_parts_of_difference(d):
  scaled, scale = _scaled_squares(d.astype(jnp.float32))
  return scaled, scale, jnp.ones(2, bool)  # The inputs were checked on the host.


def _parts(a, b):
  if _needs_host_difference(a, b):
    return _mse_parts_of_difference(a.astype(np.float64) - b.astype(np.float64))
  return _mse_parts(a, b)


@jax.jit
def _mse_from_parts(scaled, scale):
  return scaled * jnp.square(scale)


def mse(a, b) -> jax.Array:
  """Mean squared error per image, like `skimage.metrics.mean_squared_error`.

  Args:
    a: `[B, H, W, C]` reference images, any real dtype. The difference is taken exactly
      (host float64 pairs and int32/int64 pairs are subtracted on the host in float64,
      float64 JAX arrays in float64 on the device), then squared and averaged in float32:
      ~1e-7 relative to scikit-image's float64, however close the two images are.
    b: `[B, H, W, C]` images compared with them, of a's dtype (or another float dtype).

  Returns:
    `[B]` float32, in squared units of the input (e.g. uint8 levels squared); exactly 0 for
    identical images.
  """
  a, b = checks.as_pair(a, b, metric='mse')
  checks.check_pair(a, b, metric='mse')
  scaled, scale, finite = _parts(a, b)
  checks.raise_if_not_finite(finite, metric='mse')
  return _mse_from_parts(scaled, scale)


@functools.partial(jax.jit, static_argnames='data_range')
def _psnr_from_parts(scaled, scale, data_range):
  # In logarithms, so that an MSE below float32's range (differences < ~1e-19) stays finite.
  return (20.0 * (np.log10(data_range) - jnp.log10(scale)) - 10.0 * jnp.log10(scaled))


def psnr(a, b, data_range: float | None = None) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image, like `skimage.metrics.peak_signal_noise_ratio`.

  Args:
    a: `[B, H, W, C]` reference images.
    b: `[B, H, W, C]` images compared with them, of a's dtype (or another float dtype).
    data_range: max - min of the value range, e.g. 1.0 for [0, 1] floats, 255.0 for 0..255.
      Required unless both batches are uint8 (then 255.0, as scikit-image): guessing it for
      other dtypes (scikit-image takes 1.0 for non-negative floats) is the classic trap.

  Returns:
    `[B]` float32 in dB (precision as `mse`, computed in logarithms so that it stays finite
    for differences too small for a float32 MSE); `inf` where the two images are identical,
    as scikit-image.
  """
  a, b = checks.as_pair(a, b, metric='psnr')
  checks.check_pair(a, b, metric='psnr')
  data_range = checks.resolve_data_range(a, b, data_range, metric='psnr')
  checks.check_span(a, b, data_range, metric='psnr')
  scaled, scale, finite = _parts(a, b)
  checks.raise_if_not_finite(finite, metric='psnr')
  return _psnr_from_parts(scaled, scale, data_range)
