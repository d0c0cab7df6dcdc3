"""The speed-oriented pieces of the models (vision_core.matmul, vision_core.fused_norm,
vit_jax.ops) against plain formulations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from tests.test_vit_model import tiny_config
from vision_core import fused_norm
from vision_core.matmul import matmul
from vit_jax import models_vit, ops


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
  np.testing.assert_allclose(fused_norm.normalize(y), ln.apply(ln.init(jax.random.key(1), y), y),
                             atol=1e-5)


def test_patch_embedding_matmul_matches_strided_conv():
  rng = np.random.default_rng(0)
  # 35 px with 16 px patches: 'VALID' leaves 3 rows and columns out; (2, 3) is not square.
  for patch, side in (((16, 16), 35), ((2, 3), 12), ((1, 1), 5)):
    x = jnp.asarray(rng.uniform(-1, 1, (2, side, side, 3)), jnp.float32)
    conv = nn.Conv(8, patch, strides=patch, padding='VALID')
    ours = ops.PatchEmbedding(8, patch)
    params = conv.init(jax.random.key(0), x)
    ours_params = ours.init(jax.random.key(0), x)
    # Same names, shapes and initial values, so checkpoints and seeds carry over.
    jax.tree.map(np.testing.assert_array_equal, params, ours_params)
    params = jax.tree.map(lambda a: a + rng.normal(size=a.shape).astype(np.float32), params)
    np.testing.assert_allclose(ours.apply(params, x), conv.apply(params, x), rtol=1e-5,
                               atol=1e-5)
    loss = lambda m: (lambda p: jnp.sum(jnp.sin(m.apply(p, x))))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 jax.grad(loss(ours))(params), jax.grad(loss(conv))(params))


def assert_same_vit(config, **option):
  """`VisionTransformer(**option, **config)` gives the default model's logits and parameter
  gradients, on perturbed parameters (so zero-initialised ones matter too)."""
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  default = models_vit.VisionTransformer(**config)
  variant = models_vit.VisionTransformer(**option, **config)
  # Jitted: op by op, each of the gradient's few hundred ops compiles alone (~3x slower).
  params = jax.jit(default.init)(jax.random.key(0), x)['params']
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape),
                        params)
  apply = lambda m: jax.jit(lambda p: m.apply({'params': p}, x))
  np.testing.assert_allclose(apply(variant)(params), apply(default)(params), rtol=1e-5,
                             atol=1e-5)
  loss = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(m.apply({'params': p}, x)))))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               loss(variant)(params), loss(default)(params))
  return x


def test_vit_patch_embedding_option():
  config = dict(num_classes=5, **tiny_config())
  x = assert_same_vit(config, patch_embedding='matmul')
  with pytest.raises(ValueError, match="patch_embedding='patches': expected one of"):
    models_vit.VisionTransformer(patch_embedding='patches', **config).init(
        jax.random.key(0), x)


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_vit_fused_norm_option_matches_xla(classifier):
  """norm_impl='pallas_interpret' (each residual add and the LayerNorm after it in one
  kernel, interpreted) gives XLA's logits and parameter gradients. 'token': the last
  block computes the class token only; 'gap': every token."""
  config = dict(num_classes=5, **tiny_config(classifier=classifier))
  x = assert_same_vit(config, norm_impl='pallas_interpret')
  with pytest.raises(ValueError, match="norm_impl='fused': expected one of"):
    models_vit.VisionTransformer(norm_impl='fused', **config).init(jax.random.key(0), x)
