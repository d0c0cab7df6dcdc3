"""Pixel-wise metrics on `[B, H, W, C]` batches: mean squared error and PSNR, one value per image.

Both are jit-compiled and run on batches sharded over the mesh's 'data' axis (pass arrays placed
with `vision_core.mesh.shard_batch`); the result is sharded the same way.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

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


@jax.jit
def _mse(a, b):
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  return mean_per_image(jnp.square(a - b)), finite_flags(a, b)


def mse(a, b) -> jax.Array:
  """Mean squared error per image, like `skimage.metrics.mean_squared_error`.

  Args:
    a: `[B, H, W, C]` reference images (any real dtype; computed in float32).
    b: `[B, H, W, C]` images compared with them.

  Returns:
    `[B]` float32, in squared units of the input (e.g. uint8 levels squared).
  """
  checks.check_pair(a, b, metric='mse')
  values, finite = _mse(a, b)
  checks.raise_if_not_finite(finite, metric='mse')
  return values


@functools.partial(jax.jit, static_argnames='data_range')
def _psnr(a, b, data_range):
  values, finite = _mse(a, b)
  return 10.0 * jnp.log10(data_range**2 / values), finite


def psnr(a, b, *, data_range: float) -> jax.Array:
  """Peak signal-to-noise ratio in dB per image, like `skimage.metrics.peak_signal_noise_ratio`.

  Args:
    a: `[B, H, W, C]` reference images.
    b: `[B, H, W, C]` images compared with them.
    data_range: max - min of the value range, e.g. 255.0 for uint8, 1.0 for [0, 1] floats.
      Required: guessing it from the dtype or the data is the classic source of wrong numbers.

  Returns:
    `[B]` float32 in dB; `inf` where the two images are identical.
  """
  data_range = checks.check_data_range(data_range, metric='psnr')
  checks.check_pair(a, b, metric='psnr')
  values, finite = _psnr(a, b, data_range)
  checks.raise_if_not_finite(finite, metric='psnr')
  return values
