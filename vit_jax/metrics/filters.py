"""The separable Gaussian window of SSIM, as a 'valid' filter on `[..., H, W]` maps.

Why not `lax.conv`: XLA's CPU convolutions run this 11x11 window several times slower than
scikit-image. A separable filter written as 11 shifted, scaled slices per axis fuses into one
loop per axis and is the fastest formulation we measured on CPU (see docs/benchmarks.md).
"""

from __future__ import annotations

import numpy as np
import jax


def gaussian_taps(size: int = 11, sigma: float = 1.5) -> np.ndarray:
  """`[size]` float64 taps exp(-x^2 / (2 sigma^2)) summing to 1 (as scipy.ndimage's)."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2
  taps = np.exp(-0.5 * (x / sigma)**2)
  return taps / taps.sum()


def _filter_axis(x: jax.Array, taps: np.ndarray, axis: int) -> jax.Array:
  n = x.shape[axis] - len(taps) + 1
  total = None
  for k, w in enumerate(taps):
    term = float(w) * jax.lax.slice_in_dim(x, k, k + n, axis=axis)
    total = term if total is None else total + term
  return total


def valid_filter(x: jax.Array, taps: np.ndarray) -> jax.Array:
  """Separable filter of `[..., H, W]` with `taps` along H and W, keeping only the valid part.

  Returns `[..., H - len(taps) + 1, W - len(taps) + 1]`: exactly the window positions that
  lie inside the image, i.e. scipy's `gaussian_filter` output with the border of
  `len(taps) // 2` pixels cropped, which is what scikit-image averages.
  """
  return _filter_axis(_filter_axis(x, taps, x.ndim - 2), taps, x.ndim - 1)
