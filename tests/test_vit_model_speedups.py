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
    # Values and gradients of both in one jitted program: op by op, each op compiles alone.
    (value, grad), (flax_value, flax_grad) = jax.jit(lambda t: [
        (f(t), jax.grad(lambda u, f=f: f(u).sum())(t)) for f in (ours, flax_gelu)])(x)
    np.testing.assert_allclose(value, flax_value, atol=2e-6)
    np.testing.assert_allclose(grad, flax_grad, atol=1e-5)
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
    # Outputs and gradients of both in one jitted program: op by op, each op compiled alone.
    loss = lambda m: (lambda p: jnp.sum(jnp.sin(m.apply(p, x))))
    (out, grad), (conv_out, conv_grad) = jax.jit(lambda p: [
        (m.apply(p, x), jax.grad(loss(m))(p)) for m in (ours, conv)])(params)
    np.testing.assert_allclose(out, conv_out, rtol=1e-5, atol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                 grad, conv_grad)


def _logits_and_grads(model, params, x):
  """`model`'s logits and the parameter gradients of `sum(sin(logits))`, from one jitted
  program: op by op, each of the gradient's few hundred ops compiles alone (~3x slower);
  apart, the forward pass compiles twice."""
  def both(p):
    logits, vjp = jax.vjp(lambda q: model.apply({'params': q}, x), p)
    return logits, vjp(jnp.cos(logits))[0]
  return jax.jit(both)(params)


def _config(classifier):
  return dict(num_classes=5, **tiny_config(classifier=classifier))


@functools.cache
def _default_vit(classifier):
  """The default model of `_config(classifier)`: its input, perturbed parameters (so
  zero-initialised ones matter too), logits and gradients. Computed once for the options
  compared with it (each compilation takes seconds on a CPU)."""
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  default = models_vit.VisionTransformer(**_config(classifier))
  params = jax.jit(default.init)(jax.random.key(0), x)['params']
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape),
                        params)
  return x, params, _logits_and_grads(default, params, x)


def assert_same_vit(classifier, **option):
  """`VisionTransformer(**option, **_config(classifier))` gives the default model's logits
  and parameter gradients; returns the input."""
  x, params, (logits, grads) = _default_vit(classifier)
  variant = models_vit.VisionTransformer(**option, **_config(classifier))
  variant_logits, variant_grads = _logits_and_grads(variant, params, x)
  np.testing.assert_allclose(variant_logits, logits, rtol=1e-5, atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
               variant_grads, grads)
  return x


def test_vit_patch_embedding_option():
  x = assert_same_vit('token', patch_embedding='matmul')
  with pytest.raises(ValueError, match="patch_embedding='patches': expected one of"):
    models_vit.VisionTransformer(patch_embedding='patches', **_config('token')).init(
        jax.random.key(0), x)


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_vit_fused_norm_option_matches_xla(classifier):
  """norm_impl='pallas_interpret' (each residual add and the LayerNorm after it in one
  kernel, interpreted) gives XLA's logits and parameter gradients. 'token': the last
  block computes the class token only; 'gap': every token."""
  x = assert_same_vit(classifier, norm_impl='pallas_interpret')
  with pytest.raises(ValueError, match="norm_impl='fused': expected one of"):
    models_vit.VisionTransformer(norm_impl='fused', **_config(classifier)).init(
        jax.random.key(0), x)
