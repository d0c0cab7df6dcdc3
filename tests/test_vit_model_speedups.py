"""The speed-oriented pieces of the models (vision_core.matmul, vit_jax.ops) against plain
formulations."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import flax.linen as nn
import pytest

from tests.test_vit_model import tiny_config
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
  np.testing.assert_allclose(ops.normalize(y), ln.apply(ln.init(jax.random.key(1), y), y),
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


def test_vit_patch_embedding_option():
  config = dict(num_classes=5, **tiny_config())
  x = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
  conv = models_vit.VisionTransformer(**config)
  matmul_model = models_vit.VisionTransformer(patch_embedding='matmul', **config)
  params = conv.init(jax.random.key(0), x)['params']
  params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(2), a.shape),
                        params)
  np.testing.assert_allclose(matmul_model.apply({'params': params}, x),
                             conv.apply({'params': params}, x), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="patch_embedding='patches': expected one of"):
    models_vit.VisionTransformer(patch_embedding='patches', **config).init(
        jax.random.key(0), x)


def _numpy_attention(q, k, v, valid_keys):
  """float64 softmax attention over the first `valid_keys` keys: `[B, N, H, Dh]` each."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k)[..., :valid_keys]
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', weights, v[:, :valid_keys])


@pytest.mark.parametrize('tokens,valid_keys,blocks,dtype', [
    (21, 21, (16, 8), jnp.float32), (24, 19, (8, 16), jnp.float32),
    (40, 37, (16, 16), jnp.bfloat16)])
def test_flash_attention_matches_numpy_values_and_gradients(tokens, valid_keys, blocks, dtype):
  """ops.flash_attention (JAX's Pallas kernels, interpreted) on token counts that are not a
  multiple of its tiles, with trailing padding tokens that must not be attended to: the
  real queries' outputs and the gradients reaching q, k and v from them match a float64
  numpy pass and its autodiff by a plain jnp formulation."""
  rng = np.random.default_rng(3)
  q, k, v = (rng.normal(0, 0.6, (2, tokens, 2, 16)).astype(np.float32) for _ in range(3))
  cotangent = rng.normal(0, 1, (2, tokens, 2, 16)).astype(np.float32)
  cotangent[:, valid_keys:] = 0  # padded queries are dropped downstream
  tol = dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=1e-5, atol=1e-5)

  def flash(q, k, v):
    return ops.flash_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype), valid_keys,
                               interpret=True, blocks=blocks).astype(jnp.float32)

  out = flash(q, k, v)
  assert out.shape == q.shape and out.dtype == jnp.float32
  np.testing.assert_allclose(out[:, :valid_keys],
                             _numpy_attention(q, k, v, valid_keys)[:, :valid_keys], **tol)
  assert np.isfinite(np.asarray(out)).all()

  def plain(q, k, v):
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k[:, :valid_keys])
    return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, -1), v[:, :valid_keys])

  grads = [jax.grad(lambda *a, f=f: jnp.sum(f(*a) * cotangent), argnums=(0, 1, 2))(q, k, v)
           for f in (flash, plain)]
  for name, got, want in zip('qkv', *grads):
    np.testing.assert_allclose(got, want, err_msg=f'd{name}', **tol)
    # Padding keys get no gradient; their rows of dk/dv are zero on both sides.
    if name != 'q':
      np.testing.assert_array_equal(np.asarray(got)[:, valid_keys:], 0)


def test_flash_attention_lowers_for_cuda_at_vit_b16_shapes():
  """At ViT-B/16's shapes (197 tokens, 12 heads of 64, bf16) the kernels lower to Triton for
  CUDA on any host: the forward is one Triton call, its gradient two more (the rows' dO.O,
  then one kernel for dq, dk and dv).
  Their speed is measured by bench/gpu_vit_variants.sh on a GPU."""
  shape = jax.ShapeDtypeStruct((8, 197, 12, 64), jnp.bfloat16)

  def triton_calls(f):
    text = jax.jit(f).trace(shape, shape, shape).lower(lowering_platforms=('cuda',)).as_text()
    return text.count('custom_call @__gpu$xla.gpu.triton')

  attention = lambda q, k, v: ops.flash_attention(q, k, v, 197)
  assert triton_calls(attention) == 1
  loss = lambda q, k, v: jnp.sum(attention(q, k, v).astype(jnp.float32))
  assert triton_calls(jax.grad(loss, argnums=(0, 1, 2))) == 3
