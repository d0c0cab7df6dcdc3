"""float32 arithmetic rounded exactly as OpenCV's C++/SIMD code rounds it, under XLA.

XLA's CPU compiler contracts `a * b + c` into a fused multiply-add (one rounding) wherever it
sees one; OpenCV rounds the product first except where its SIMD kernels call `v_fma`. Metrics
that must reproduce OpenCV to the last bit (BRISQUE) build on these helpers. `zero` is an
int32 0 passed as an argument of the jitted function: the compiler cannot prove it is 0, so
`rounded` keeps a value materialised as float32. `fma` and `opencv_exp` emulate a single
rounding in float64, so they must be traced under `jax.enable_x64(True)` (the BRISQUE entry
points do that).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def rounded(x: jax.Array, zero: jax.Array) -> jax.Array:
  """`x` as stored float32, never fused with the op that consumes it.

  XLA's CPU backend contracts `a * b + c` into one fused multiply-add (one rounding), while
  OpenCV rounds the product first. Passing the bits through an xor with a run-time zero (an
  argument of the jitted function, which no compiler can prove is 0) keeps the product
  rounded; it costs one integer op per element.
  """
  bits = jax.lax.bitcast_convert_type(x, jnp.int32) ^ zero
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def fma(a: jax.Array, b, c: jax.Array) -> jax.Array:
  """float32 fma(a, b, c) with one rounding, as OpenCV's SIMD `v_muladd` on FMA hardware.

  Emulated in float64 (the product of two float32 numbers is exact there), so the result is
  the same whether or not the compiler fuses it.
  """
  return (a.astype(jnp.float64) * np.float64(b) + c.astype(jnp.float64)).astype(jnp.float32)


def mul(a: jax.Array, b, zero: jax.Array) -> jax.Array:
  """float32 a * b, rounded before any later add."""
  return rounded(a * b, zero)


# OpenCV's portable float32 exp (core/mathfuncs_core, `exp32f`): a 64-entry table of
# 2^(j/64) and a degree-4 polynomial. Its last bit moves the SVR sum (weights up to 1024)
# by ~1e-3, so it is reproduced rather than replaced by XLA's exp.
_EXP_A0 = .9670371139572337719125840413672004409288e-2
_EXP_POLY = [np.float32(c / _EXP_A0) for c in (
    .5550339366753125211915322047004666939128e-1, .2402265109513301490103372422686535526573,
    .6931471805521448196800669615864773144641, 1.000000000000002438532970795181890933776)]
_EXP_TABLE = (np.exp2(np.arange(64) / 64) * _EXP_A0).astype(np.float32)
_EXP_PRESCALE = 1.4426950408889634073599246810019 * 64


def opencv_exp(x: jax.Array, zero: jax.Array) -> jax.Array:
  """float32 exp bit for bit as OpenCV's `cv::exp` without IPP."""
  limit = 3000.0 * 64 / _EXP_PRESCALE
  x = jnp.clip(x, np.float32(-limit), np.float32(limit))
  xf = mul(x, np.float32(_EXP_PRESCALE), zero)
  xi = jnp.round(xf).astype(jnp.int32)  # Round half to even, as cvtps2dq.
  xf = (xf - xi.astype(jnp.float32)) * np.float32(1 / 64)
  exponent = jnp.clip((xi >> 6) + 127, 0, 255) << 23
  y = jnp.asarray(_EXP_TABLE)[xi & 63] * jax.lax.bitcast_convert_type(exponent, jnp.float32)
  z = xf + _EXP_POLY[0]
  for c in _EXP_POLY[1:]:
    z = (z.astype(jnp.float64) * xf.astype(jnp.float64) + np.float64(c)).astype(jnp.float32)
  return z * y
