"""A matmul whose gradient suits XLA:CPU, for the models of all three families.

`matmul(x, w)` is `x @ w`; only the work its backward gives XLA differs (tests compare it with
the plain product's gradients).
"""

import jax
import jax.numpy as jnp


@jax.custom_vjp
def matmul(x, w):
  """`x [..., D] @ w [D, F]` -> `[..., F]`, with a weight gradient that copies less.

  The gradient for `w` is `x^T dy` over all leading axes, and XLA:CPU copies whichever
  operand it must transpose; this picks the narrower of `x` and `dy` for that copy. For a
  transformer MLP's second matmul (`x` 4x wider than `dy`) XLA's own choice copies 4x the
  bytes: a fifth of a small Image GPT's CPU step went to that copy.
  """
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
