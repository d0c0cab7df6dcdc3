"""OpenCV's image operations for BRISQUE, rounded as OpenCV rounds them: grey, half size, blur.

Each reproduces the portable (non-IPP) code path of OpenCV 4/5 bit for bit on `[B, H, W]`
float32 maps (see `vit_jax.metrics.brisque` for why the last bit matters), using the rounding
helpers of `opencv_float`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.metrics.opencv_float import fma as _fma, mul as _mul

# OpenCV's BGR2GRAY for 8-bit images: 15-bit fixed point, round half up.
_GREY_FIXED = (9798, 19235, 3735)  # R, G, B
_GREY_FLOAT = (0.299, 0.587, 0.114)


def to_grey(images: jax.Array, zero: jax.Array) -> jax.Array:
  """`[B, H, W, C]` (C = 1, 3 RGB or 4 RGBA) -> `[B, H, W]` float32 in [0, 1]."""
  c = images.shape[-1]
  if c == 1:
    grey = images[..., 0].astype(jnp.float32)
  elif jnp.issubdtype(images.dtype, jnp.integer):
    r, g, b = (images[..., k].astype(jnp.int32) * w for k, w in enumerate(_GREY_FIXED))
    grey = (r + g + b + (1 << 14)) >> 15  # int32 throughout (a sum would widen to int64).
    grey = jnp.clip(grey, 0, 255).astype(jnp.float32)
  else:
    rgb = images[..., :3].astype(jnp.float32)
    grey = (rgb * jnp.asarray(_GREY_FLOAT, jnp.float32)).sum(-1)
  return _mul(grey, np.float32(1 / 255), zero)


def _cubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """OpenCV INTER_CUBIC source indices `[n_out, 4]` and float32 weights `[n_out, 4]`."""
  a = np.float32(-0.75)
  scale = 1.0 / (n_out / n_in)
  centre = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
  start = np.floor(centre).astype(np.int64)
  t = (centre - start).astype(np.float32)
  w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
  w1 = ((a + 2) * t - (a + 3)) * t * t + 1
  w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
  w3 = 1 - w0 - w1 - w2
  index = np.clip(start[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
  return index, np.stack([w0, w1, w2, w3], -1).astype(np.float32)


def _resize_axis(x: jax.Array, n_out: int, axis: int, order: tuple[int, ...],
                 zero: jax.Array) -> jax.Array:
  """One bicubic pass along `axis`, summing the four taps in `order` with float32 rounding."""
  index, weights = _cubic_taps(x.shape[axis], n_out)
  shape = [-1 if a == axis else 1 for a in range(x.ndim)]
  terms = [_mul(jnp.take(x, index[:, k], axis=axis), weights[:, k].reshape(shape), zero)
           for k in range(4)]
  out = terms[order[0]]
  for k in order[1:]:
    out = out + terms[k]
  return out


def half_size(x: jax.Array, zero: jax.Array) -> jax.Array:
  """`[B, H, W]` -> `[B, H//2, W//2]`, OpenCV's bicubic resize, bit for bit its portable path.

  OpenCV resizes rows first, adding the taps left to right, then columns, adding the taps
  from the last row to the first (its vertical SIMD kernel). OpenCV builds with Intel IPP use
  IPP's resize instead, whose last bits differ (see docs/metrics.md).
  """
  _, h, w = x.shape
  x = _resize_axis(x, w // 2, 2, (0, 1, 2, 3), zero)
  simd = _resize_axis(x, h // 2, 1, (3, 2, 1, 0), zero)
  # The vertical kernel runs on 4 columns at a time; the last (W/2) % 4 columns go through
  # OpenCV's scalar loop, which adds the taps first to last.
  tail = (w // 2) % 4
  if not tail:
    return simd
  scalar = _resize_axis(x[:, :, -tail:], h // 2, 1, (0, 1, 2, 3), zero)
  return jnp.concatenate([simd[:, :, :-tail], scalar], axis=2)


def _gaussian_taps() -> np.ndarray:
  """OpenCV's getGaussianKernel(7, 7/6, CV_32F): normalised in float64, stored as float32."""
  taps = np.exp(-0.5 / (7 / 6) ** 2 * (np.arange(7) - 3.0) ** 2)
  return (taps / taps.sum()).astype(np.float32)


_TAPS = _gaussian_taps()


def _blur_rows(p: jax.Array, w: int, fused: bool, zero: jax.Array) -> jax.Array:
  """Row pass over the padded `p`: taps left to right, fused multiply-adds or not."""
  rows = _mul(p[:, :, 0:w], _TAPS[0], zero)
  for k in range(1, 7):
    rows = (_fma(p[:, :, k:k + w], _TAPS[k], rows) if fused
            else rows + _mul(p[:, :, k:k + w], _TAPS[k], zero))
  return rows


def _blur_columns(p: jax.Array, h: int, fused: bool, zero: jax.Array) -> jax.Array:
  """Column pass over the padded `p`: centre row, then each symmetric pair of rows."""
  out = _mul(p[:, 3:3 + h], _TAPS[3], zero)
  for k in range(1, 4):
    pair = p[:, 3 + k:3 + k + h] + p[:, 3 - k:3 - k + h]
    out = _fma(pair, _TAPS[3 + k], out) if fused else out + _mul(pair, _TAPS[3 + k], zero)
  return out


def gaussian_7x7(x: jax.Array, zero: jax.Array) -> jax.Array:
  """7x7 Gaussian, sigma 7/6, replicated border, on `[B, H, W]` float32, as OpenCV's.

  OpenCV filters rows first, accumulating the seven taps left to right with fused
  multiply-adds (8 columns at a time), then columns, adding each symmetric pair of rows
  before its fused multiply-add. Columns past the last multiple of 8 go through its scalar
  loops, which round every product. The BRISQUE variance E[x^2] - mu^2 cancels badly in flat
  regions, so the last bit of the blur is visible in the score. Bit-exact for widths that
  are a multiple of 4 (and, past the last multiple of 8, 4 more columns); the last W % 4
  columns of other widths can differ in the last bit.
  """
  h, w = x.shape[1:]
  w8, w4 = w - w % 8, w - w % 4
  def row_pass(p):
    rows = _blur_rows(p, w, True, zero)
    if w4 < w:
      tail = _blur_rows(p[:, :, w4:], w - w4, False, zero)
      rows = jnp.concatenate([rows[:, :, :w4], tail], axis=2)
    return rows
  p = jnp.pad(x, ((0, 0), (0, 0), (3, 3)), mode='edge')
  # Run as a branch of a conditional (always taken), its result is stored once; otherwise XLA
  # fuses the row pass into both edge-padded copies below and computes it twice.
  rows = jax.lax.cond(zero == 0, row_pass, lambda p: p[:, :, :w], p)
  p = jnp.pad(rows, ((0, 0), (3, 3), (0, 0)), mode='edge')
  out = _blur_columns(p, h, True, zero)
  if w8 < w:
    tail = _blur_columns(p[:, :, w8:], h, False, zero)
    out = jnp.concatenate([out[:, :, :w8], tail], axis=2)
  return out
