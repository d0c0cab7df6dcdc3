"""vision_core.layouts.row_major: the identity, on one device and on each device's batch
shard of a mesh of the 8 CPU test devices (no array gathered whole). Its purpose, the
residual stream's layout in a GPU compile, is checked in tests/test_gpu_target.py."""

import re

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from tests import vit_train_helpers as helpers
from tests.test_vit_model import tiny_config
from vision_core import layouts, mesh as mesh_lib
from vit_jax import models_vit


def test_row_major_is_the_identity_with_its_gradient():
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3, 5)), jnp.float32)
  np.testing.assert_array_equal(layouts.row_major(x), x)  # eager
  np.testing.assert_array_equal(jax.jit(layouts.row_major)(x), x)
  weights = jnp.arange(60, dtype=jnp.float32).reshape(4, 3, 5)
  grad = jax.grad(lambda a: jnp.sum(weights * jnp.sin(layouts.row_major(a))))(x)
  np.testing.assert_allclose(grad, weights * jnp.cos(x), rtol=1e-6)


def test_row_major_keeps_each_devices_batch_shard():
  mesh = mesh_lib.make_mesh((8, 1))
  x = np.random.default_rng(1).normal(size=(16, 6, 4)).astype(np.float32)
  split = jax.device_put(x, NamedSharding(mesh, P('data')))
  fn = jax.jit(lambda a: 2.0 * layouts.row_major(a))
  out = fn(split)
  np.testing.assert_allclose(out, 2.0 * x)
  assert out.sharding.spec[0] == 'data'
  assert re.findall(r'= (\S+) all-gather', fn.lower(split).compile().as_text()) == []


def test_vit_with_the_matmul_patch_embedding_gathers_nothing_on_a_data_mesh():
  """The data-parallel train step gathers no activation: with the layout pinned by
  `with_layout_constraint` alone (a custom call the sharding propagation cannot see
  through), every device gathered the patch embedding's output whole."""
  model = models_vit.VisionTransformer(num_classes=10, patch_embedding='matmul',
                                       **tiny_config())
  text, _ = helpers.train_step_hlo(model, mesh_lib.make_mesh((8, 1)), batch=64, side=16)
  assert re.findall(r'= (\S+) all-gather', text) == []
  assert ' all-reduce' in text or 'all-reduce-start' in text  # the gradients are summed
