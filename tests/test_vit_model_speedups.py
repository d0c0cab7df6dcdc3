"""The speed-oriented pieces of the models (vision_core.matmul, vit_jax.ops) against plain
formulations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from vision_core.matmul import matmul
from vit_jax import ops


def test_matmul_gradients_match_plain_dot():
  rng = np.random.default_rng(0)
  for d, f in ((3, 7), (7, 3)):  # both branches of the weight-gradient formulation
    x = jnp.asarray(rng.normal(size=(2, 5, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, f)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(2, 5, f)), jnp.float32)
    ours = jax.vjp(matmul, x, w)[1](dy)
    plain = jax.vjp(lambda a, b: a @ b, x, w)[1](dy)
    for a, b in zip(ours, plain):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_gelu_and_normalize_match_flax():
  x = jnp.linspace(-8, 8, 1001, dtype=jnp.float32)
  for approximate in (True, False):
    ours = functools.partial(ops.gelu, approximate=approximate)
    flax_gelu = functools.partial(nn.gelu, approximate=approximate)
    np.testing.assert_allclose(ours(x), flax_gelu(x), atol=2e-6)
    np.testing.assert_allclose(jax.grad(lambda t, f=ours: f(t).sum())(x),
                               jax.grad(lambda t, f=flax_gelu: f(t).sum())(x), atol=1e-5)
  # The default is the official models' tanh form, not the exact one.
  assert np.abs(ops.gelu(x) - nn.gelu(x, approximate=False)).max() > 1e-4
  y = jax.random.normal(jax.random.key(0), (4, 16)) * 3 + 1
  ln = nn.LayerNorm()
  np.testing.assert_allclose(ops.normalize(y), ln.apply(ln.init(jax.random.key(1), y), y),
                             atol=1e-5)
