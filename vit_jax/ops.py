"""The ViT's GELU and LayerNorm, formulated for speed (models_vit uses them; its matmul is
vision_core.matmul).

Each computes what its plain formulation does (tests/test_vit_model_speedups.py checks that);
only the work XLA is given differs.
"""

import jax
import jax.numpy as jnp


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

