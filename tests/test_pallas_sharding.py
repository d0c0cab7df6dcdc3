"""vision_core.pallas_sharding: Pallas kernels on a mesh of the 8 CPU test devices run on
each device's shard (no operand gathered whole), with the single-device results."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vision_core import flash_attention, fused_mlp, mesh as mesh_lib, pallas_sharding


def gathered_shapes(jitted, *args) -> list[str]:
  """The shapes of the all-gathers in the compiled program."""
  return re.findall(r'= (\S+) all-gather', jitted.lower(*args).compile().as_text())


@pytest.fixture
def mesh():
  return mesh_lib.make_mesh((4, 2))  # ('data', 'model')


def test_sharded_keeps_the_split_axes_and_sums_partial_sums(mesh):
  calls = []

  def rows_and_sums(x, w):
    calls.append(x.shape)  # traced: once whole (abstract), once per device's shard
    return x @ w, jnp.sum(x, axis=0)

  fn = pallas_sharding.sharded(rows_and_sums, ['b.', '..'], ['b.', '.'], summed=(1,))
  x = np.arange(64 * 8, dtype=np.float32).reshape(64, 8)
  w = np.linspace(-1, 1, 8 * 4, dtype=np.float32).reshape(8, 4)
  split = jax.device_put(x, NamedSharding(mesh, P('data', None)))
  jitted = jax.jit(fn)
  rows, sums = jitted(split, w)
  np.testing.assert_allclose(rows, x.astype(np.float64) @ w, rtol=1e-5, atol=1e-3)
  np.testing.assert_allclose(sums, x.sum(0), rtol=1e-6)  # summed over the 4 shards
  assert rows.sharding.spec == P('data', None)
  assert (16, 8) in calls  # the kernel saw a quarter of the rows
  assert gathered_shapes(jitted, split, w) == []


def test_flash_attention_runs_on_each_devices_batch_and_heads(mesh):
  """attention_kvq with the batch split over 'data' and the heads over 'model': the same
  values and gradients as on one device, no gathers, and the gradient split like kvq."""
  tiles = flash_attention.Tiles(16, 16, 16, 16, min_tail=4)
  rng = np.random.default_rng(0)
  kvq = rng.normal(0, 0.7, (8, 21, 3, 4, 16)).astype(np.float32)
  bias = rng.normal(0, 0.7, (3, 4, 16)).astype(np.float32)

  def loss(kvq, bias):
    out = flash_attention.attention_kvq(kvq, 19, tiles, True, bias=bias)
    return jnp.sum(out * jnp.cos(out))

  want = jax.value_and_grad(loss, (0, 1))(kvq, bias)
  split = jax.device_put(kvq, NamedSharding(mesh, P('data', None, None, 'model')))
  jitted = jax.jit(jax.value_and_grad(loss, (0, 1)))
  value, (d_kvq, d_bias) = jitted(split, bias)
  np.testing.assert_allclose(value, want[0], rtol=1e-5)
  np.testing.assert_allclose(d_kvq, want[1][0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(d_bias, want[1][1], rtol=1e-5, atol=1e-5)
  assert d_kvq.sharding.spec == P('data', None, None, 'model')
  assert gathered_shapes(jitted, split, bias) == []


def test_fused_mlp_runs_on_each_devices_rows(mesh):
  """The fused MLP's kernels on rows split over 'data': the same values and gradients (the
  bias gradient's partial sums summed over the devices), no gathers of the rows."""
  tiles = fused_mlp.Tiles(32, 64, 32, 4, 2)
  rng = np.random.default_rng(1)
  x = rng.normal(0, 1, (128, 64)).astype(np.float32)
  w1 = rng.normal(0, 0.1, (64, 128)).astype(np.float32)
  b1 = rng.normal(0, 0.1, (128,)).astype(np.float32)
  w2 = rng.normal(0, 0.1, (128, 64)).astype(np.float32)
  b2 = rng.normal(0, 0.1, (64,)).astype(np.float32)

  def loss(*params):
    return jnp.sum(fused_mlp.mlp(*params, tiles, tiles, True) ** 2)

  params = (x, w1, b1, w2, b2)
  want = jax.value_and_grad(loss, tuple(range(5)))(*params)
  split = (jax.device_put(x, NamedSharding(mesh, P('data', None))), *params[1:])
  jitted = jax.jit(jax.value_and_grad(loss, tuple(range(5))))
  value, grads = jitted(*split)
  np.testing.assert_allclose(value, want[0], rtol=1e-5)
  for name, got, expected in zip(('x', 'w1', 'b1', 'w2', 'b2'), grads, want[1]):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)
  assert gathered_shapes(jitted, *split) == []
