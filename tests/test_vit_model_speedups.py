"""vit_jax.ops, the speed-oriented pieces of models_vit, against plain formulations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn

from vit_jax import ops


def test_matmul_gradients_match_plain_dot():
  rng = np.random.default_rng(0)
  for d, f in ((3, 7), (7, 3)):  # both branches of the weight-gradient formulation
    x = jnp.asarray(rng.normal(size=(2, 5, d)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(d, f)), jnp.float32)
    dy = jnp.asarray(rng.normal(size=(2, 5, f)), jnp.float32)
    ours = jax.vjp(ops.matmul, x, w)[1](dy)
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


def test_bias_in_matmul_and_gelu_keeping_input_match_the_plain_forms():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 5, 6)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(6, 3, 4)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(3, 4)), jnp.float32)
  dy = jnp.asarray(rng.normal(size=(2, 5, 3, 4)), jnp.float32)
  plain = lambda a, k, c: jnp.einsum('bnd,dhk->bnhk', a, k) + c
  y, vjp = jax.vjp(ops.matmul_bias, x, w, b)
  y0, vjp0 = jax.vjp(plain, x, w, b)
  np.testing.assert_allclose(y, y0, rtol=1e-5, atol=1e-5)
  for a, c in zip(vjp(dy), vjp0(dy)):
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
  t = jnp.linspace(-8, 8, 1001, dtype=jnp.float32)
  np.testing.assert_allclose(ops.gelu_keeping_input(t), nn.gelu(t), atol=1e-6)
  np.testing.assert_allclose(jax.grad(lambda u: ops.gelu_keeping_input(u).sum())(t),
                             jax.grad(lambda u: nn.gelu(u).sum())(t), atol=1e-5)


def test_vit_with_biases_in_matmuls_matches_the_default():
  from vit_jax import models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import models  # pylint: disable=g-import-not-at-top
  config = models.get_model_config('ViT-Ti_16')
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1, maxval=1)
  kw = dict(num_classes=5, attention='xla', token_multiple=8, **config)
  base = models_vit.VisionTransformer(**kw)
  folded = models_vit.VisionTransformer(bias_in_matmul=models_vit.BIAS_SITES, **kw)
  params = base.init(jax.random.key(1), x)['params']
  params = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(jax.random.key(2), p.shape),
                        params)
  loss = lambda m: (lambda p: jnp.sum(jnp.sin(m.apply({'params': p}, x))))
  l0, g0 = jax.value_and_grad(loss(base))(params)
  l1, g1 = jax.value_and_grad(loss(folded))(params)
  np.testing.assert_allclose(l0, l1, rtol=1e-5)
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(g0))
  for a, c in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
    np.testing.assert_allclose(a / scale, c / scale, atol=1e-5)
