"""The ViT's matmul, GELU and LayerNorm pieces, formulated for speed (models_vit uses them).

Each computes what its plain formulation does (tests/test_vit_model_speedups.py checks that);
only the work XLA is given differs.
"""

import jax
import jax.numpy as jnp
import numpy as np

# matmul_bias: the ones column plus zeros, so the contracted width stays a multiple of 8
# (16-byte bf16 rows, what the GPU's matmul kernels need for their fast paths).
BIAS_COLUMNS = 8


@jax.custom_vjp
def matmul(x, w):
  """`x [..., D] @ w [D, F]`. Its gradient for `w` is `x^T dy` over all leading axes, and
  XLA:CPU copies whichever operand it must transpose; this picks the narrower of `x` and `dy`
  for that copy (for the MLP's 768-wide activations, 4x fewer bytes than XLA's choice)."""
  return jnp.einsum('...d,df->...f', x, w)


def _matmul_fwd(x, w):
  return matmul(x, w), (x, w)


def _matmul_bwd(residuals, dy):
  x, w = residuals
  dx = jnp.einsum('...f,df->...d', dy, w)
  x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
  if x2.shape[1] <= dy2.shape[1]:
    dw = jnp.einsum('nd,nf->df', x2, dy2)  # the transposed (copied) operand is x
  else:
    dw = jnp.einsum('nf,nd->fd', dy2, x2).T  # ... is dy; the [F, D] result is small
  return dx, dw.astype(w.dtype)


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def gelu(x, approximate: bool = True):
  """GELU. `approximate=True`: the tanh form, flax's `nn.gelu` default and so what the
  official ViT checkpoints were trained with. False: exact `x * Phi(x)` written with erf
  (XLA's f32 erf is one rational polynomial, cheaper than the exp-based erfc that
  `nn.gelu(approximate=False)` lowers to; PyTorch's and HF's default GELU)."""
  if approximate:
    return jax.nn.gelu(x, approximate=True)
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


def normalize(x, eps: float = 1e-6):
  """LayerNorm without scale and bias, statistics in float32 as `nn.LayerNorm` computes them
  (variance as E[x^2] - E[x]^2, clipped at 0). `[..., D]` -> float32 `[..., D]`."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, -1, keepdims=True)
  var = jnp.maximum(jnp.mean(jnp.square(x), -1, keepdims=True) - jnp.square(mean), 0.0)
  return (x - mean) * jax.lax.rsqrt(var + eps)


def with_ones(x):
  """`x [..., K]` -> `[..., K + BIAS_COLUMNS]`: a column of ones, then zeros.

  Written as a pad plus a constant, not a concatenate: XLA:GPU fuses a pad into the loop that
  computes `x`, while its concatenate kernel ran at a third of the memory bandwidth (0.34 ms
  per [512, 200, 776] array on an H100)."""
  k = x.shape[-1]
  ones_column = np.zeros(k + BIAS_COLUMNS, np.float32)
  ones_column[k] = 1.0
  padded = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, BIAS_COLUMNS)])
  return padded + jnp.asarray(ones_column, x.dtype)


@jax.custom_vjp
def matmul_bias(x, w, b):
  """`x [..., K] @ w [K, *F] + b [*F]` -> `[..., *F]`, the bias added by the matmul itself.

  `x` gets a column of ones and `w` the bias as an extra row, so the matmul's output is the
  biased result: no separate pass over the `[..., *F]` output adds the bias (on a GPU that
  pass reads and writes the whole activation), and the pre-activation a GELU's backward needs
  is the matmul's own output. The backward takes the bias gradient from the same weight
  gradient matmul (the ones column's row), and the input gradient from `w` alone.
  Calls with the same `x` share the widened copy (XLA merges identical expressions).
  """
  return _matmul_bias_fwd(x, w, b)[0]


def _matmul_bias_fwd(x, w, b):
  k, f = w.shape[0], w.shape[1:]
  w2 = w.reshape(k, -1)
  w_aug = jnp.concatenate([w2, b.reshape(1, -1).astype(w2.dtype),
                           jnp.zeros((BIAS_COLUMNS - 1, w2.shape[1]), w2.dtype)])
  x_aug = with_ones(x)
  y = jnp.einsum('...k,kf->...f', x_aug, w_aug).reshape(*x.shape[:-1], *f)
  return y, (x_aug, w, b)


def _matmul_bias_bwd(residuals, dy):
  x_aug, w, b = residuals
  k = w.shape[0]
  dy2 = dy.reshape(*x_aug.shape[:-1], -1)  # [..., F]
  dx = jnp.einsum('...f,kf->...k', dy2, w.reshape(k, -1))
  dw_aug = jnp.einsum('nk,nf->kf', x_aug.reshape(-1, x_aug.shape[-1]),
                      dy2.reshape(-1, dy2.shape[-1]))
  dw = dw_aug[:k].reshape(w.shape).astype(w.dtype)
  db = dw_aug[k].reshape(b.shape).astype(b.dtype)
  return dx.astype(x_aug.dtype), dw, db


matmul_bias.defvjp(_matmul_bias_fwd, _matmul_bias_bwd)


@jax.custom_vjp
def gelu_keeping_input(x):
  """The tanh GELU, whose backward keeps only `x` and recomputes the slope from it.

  Left to autodiff, the forward writes GELU and one more `x`-sized intermediate for the
  backward; with `x` the output of a matmul (`matmul_bias`), this writes GELU alone."""
  return jax.nn.gelu(x, approximate=True)


def _gelu_keeping_input_fwd(x):
  return gelu_keeping_input(x), x


def _gelu_keeping_input_bwd(x, dy):
  c = np.sqrt(2 / np.pi).astype(np.float32)
  x32 = x.astype(jnp.float32)
  t = jnp.tanh(c * (x32 + 0.044715 * x32 ** 3))
  slope = 0.5 * (1 + t) + 0.5 * x32 * (1 - t * t) * c * (1 + 3 * 0.044715 * x32 * x32)
  return ((dy.astype(jnp.float32) * slope).astype(dy.dtype),)


gelu_keeping_input.defvjp(_gelu_keeping_input_fwd, _gelu_keeping_input_bwd)
