"""vision_core.fused_norm: the residual add + LayerNorm kernels (run in Pallas' interpreter)
against flax's nn.LayerNorm and XLA's ops, values and gradients; on a mesh of the 8 CPU
test devices; and their input checks."""

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vision_core import fused_norm, mesh as mesh_lib
from vision_core.errors import UserInputError

# No scale or bias: what add_normalize computes (the models fold them into the next matmul).
FLAX_NORM = nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False)


def flax_add_normalize(x, y, bias=None):
  s = x if y is None else x + (y if bias is None else y + bias)
  return s, FLAX_NORM.apply({}, s.astype(jnp.float32))


def arrays(shape, dtype=jnp.float32, seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=shape) * 3 + 1, dtype)  # off-centre, so the mean matters
  y = jnp.asarray(rng.normal(size=shape), dtype)
  return x, y


def weighted_loss(add_normalize, shape, seed=1):
  """A loss that weighs `s` and the normalised output differently, so that both cotangents
  (the residual's and the LayerNorm's) reach the backward."""
  rng = np.random.default_rng(seed)
  w_stream = jnp.asarray(rng.normal(size=shape), jnp.float32)
  w_norm = jnp.asarray(rng.normal(size=shape), jnp.float32)

  def loss(x, y, bias=None):
    s, xn = add_normalize(x, y, bias)
    return (jnp.sum(w_stream * s.astype(jnp.float32))
            + jnp.sum(w_norm * jnp.sin(xn.astype(jnp.float32))))
  return loss


# (shape, rows per program): 37 rows are not a multiple of 8 (padded); 768 is read in three
# chunks of 256, 96 in three of 32.
@pytest.mark.parametrize('shape,rows', [((2, 37, 96), 8), ((3, 5, 768), 4), ((16, 64), 16)])
@pytest.mark.parametrize('added', ['y', 'y_and_bias', 'nothing'])
def test_kernels_match_flax_layer_norm_and_its_gradients(shape, rows, added):
  x, y = arrays(shape)
  y = None if added == 'nothing' else y
  bias = (jnp.linspace(-2, 2, shape[-1], dtype=jnp.float32) if added == 'y_and_bias'
          else None)
  tiles = fused_norm.NormTiles(rows=rows)
  ours = lambda a, b, c: fused_norm.add_normalize(a, b, c, impl='pallas_interpret',
                                                  tiles=tiles)
  s, xn = jax.jit(ours)(x, y, bias)
  ref_s, ref_xn = flax_add_normalize(x, y, bias)
  np.testing.assert_allclose(s, ref_s, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(xn, ref_xn, rtol=1e-4, atol=1e-4)
  argnums = {'y': (0, 1), 'y_and_bias': (0, 1, 2), 'nothing': 0}[added]
  grads = jax.jit(jax.grad(weighted_loss(ours, shape), argnums))(x, y, bias)
  ref_grads = jax.grad(weighted_loss(flax_add_normalize, shape), argnums)(x, y, bias)
  assert len(jax.tree.leaves(grads)) == len(jax.tree.leaves(ref_grads))
  for g, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-4)
  xla = lambda a, b, c: fused_norm.add_normalize(a, b, c, impl='xla')
  np.testing.assert_allclose(xla(x, y, bias)[1], ref_xn, rtol=1e-4, atol=1e-4)


def test_bfloat16_stream_is_rounded_as_xla_rounds_it():
  x, y = arrays((4, 33, 64), jnp.bfloat16, seed=2)
  bias = jnp.linspace(-1, 1, 64, dtype=jnp.bfloat16)
  s, xn = fused_norm.add_normalize(x, y, bias, impl='pallas_interpret')
  assert s.dtype == xn.dtype == jnp.bfloat16
  np.testing.assert_array_equal(s, x + (y + bias))  # the stored stream: XLA's bf16 sums
  ref = fused_norm.normalize(x + (y + bias))  # float32 statistics of the rounded sum
  np.testing.assert_allclose(xn.astype(jnp.float32), ref, rtol=1e-2, atol=1e-2)
  grads = jax.grad(weighted_loss(
      lambda a, b, c: fused_norm.add_normalize(a, b, c, impl='pallas_interpret'), x.shape),
      (0, 1, 2))(x, y, bias)
  ref_grads = jax.grad(weighted_loss(flax_add_normalize, x.shape), (0, 1, 2))(x, y, bias)
  for g, ref in zip(grads, ref_grads):
    scale = float(jnp.max(jnp.abs(ref.astype(jnp.float32))))
    np.testing.assert_allclose(g.astype(jnp.float32), ref.astype(jnp.float32),
                               atol=2e-2 * scale)


def test_runs_on_each_devices_rows_of_a_mesh():
  mesh = mesh_lib.make_mesh((4, 2))
  x, y = arrays((16, 9, 32), seed=3)
  split = NamedSharding(mesh, P('data'))
  x_split, y_split = jax.device_put(x, split), jax.device_put(y, split)
  bias = jnp.linspace(-1, 1, 32, dtype=jnp.float32)
  ours = lambda a, b, c: fused_norm.add_normalize(a, b, c, impl='pallas_interpret')
  grad = jax.jit(jax.grad(weighted_loss(ours, x.shape), (0, 1, 2)))
  ref_grads = jax.grad(weighted_loss(flax_add_normalize, x.shape), (0, 1, 2))(x, y, bias)
  # The bias gradient: each device's column sums, summed over the 4 data shards.
  for g, ref in zip(grad(x_split, y_split, bias), ref_grads):
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-4)
  text = grad.lower(x_split, y_split, bias).compile().as_text()
  assert re.findall(r'= (\S+) all-gather', text) == []
  s, _ = jax.jit(ours)(x_split, y_split, bias)
  assert s.sharding.spec[0] == 'data'


def test_bad_input_is_named():
  x, y = arrays((4, 8, 16))
  with pytest.raises(ValueError, match=r"norm_impl='triton': expected one of"):
    fused_norm.add_normalize(x, y, impl='triton')
  with pytest.raises(ValueError, match=r'x float32\[4, 8, 16\] and y float32\[4, 8, 8\]'):
    fused_norm.add_normalize(x, y[..., :8], impl='pallas_interpret')
  with pytest.raises(ValueError, match=r'bias float32\[8\]: expected float32\[16\]'):
    fused_norm.add_normalize(x, y, y[0, 0, :8], impl='pallas_interpret')
  with pytest.raises(ValueError, match='a bias needs y'):
    fused_norm.add_normalize(x, None, y[0, 0], impl='xla')
  with pytest.raises(ValueError, match='NormTiles.rows=12: expected a power of two'):
    fused_norm.add_normalize(x, y, impl='pallas_interpret', tiles=fused_norm.NormTiles(12))
  if jax.default_backend() != 'gpu':
    with pytest.raises(UserInputError, match="norm_impl='pallas' runs on NVIDIA GPUs only"):
      fused_norm.add_normalize(x, y, impl='pallas')
