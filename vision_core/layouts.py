"""Pinning an activation's memory layout where XLA's choice goes wrong.

XLA picks each array's layout (which axis is minor in memory) for the whole program at once.
Where no operation constrains an activation, its choice can be poor: the ViT's patch
embedding written as a matmul leaves the residual stream unconstrained, and for an H100 XLA
then lays it out batch-minor (`[N, D, B]`), so that every residual add transposes
(vit_jax.ops.PatchEmbedding). `row_major(x)` is `x` with its layout fixed row-major (last
axis minor), what the convolution it replaces imposes.

`jax.experimental.layout.with_layout_constraint` does the pinning, but it lowers to a custom
call that the sharding propagation cannot see through: on a batch-sharded mesh each device
would gather the whole array. So here it runs per device through
vision_core.pallas_sharding (each device pins its own batch shard), and its gradient is
pinned the same way.
"""

from __future__ import annotations

import jax
from jax.experimental import layout as jax_layout

from vision_core import pallas_sharding


def _pin(x):
  return jax_layout.with_layout_constraint(
      x, jax_layout.Layout(major_to_minor=tuple(range(x.ndim))))


def _pin_each_shard(x):
  """`_pin` on each device's shard; axis 0 follows the batch, the others are whole."""
  roles = 'b' + '.' * (x.ndim - 1)
  return pallas_sharding.sharded(lambda a: (_pin(a),), [roles], [roles])(x)[0]


@jax.custom_vjp
def row_major(x):
  """`x [B, ...]` unchanged, laid out in memory row-major (last axis minor), as is its
  gradient. Axis 0 is the batch: on a mesh it stays split as it is; the other axes are
  made whole on each device (split, they would be gathered)."""
  return _pin_each_shard(x)


def _row_major_fwd(x):
  return _pin_each_shard(x), None


def _row_major_bwd(_, dy):
  return (_pin_each_shard(dy),)


row_major.defvjp(_row_major_fwd, _row_major_bwd)
