"""The ViT's matmul, GELU and LayerNorm pieces, formulated for speed (models_vit uses them).

Each computes what its plain formulation does (tests/test_vit_model_speedups.py checks that);
only the work XLA is given differs.
"""

import jax
import jax.numpy as jnp


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

