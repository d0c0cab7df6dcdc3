"""Pallas kernels on a device mesh: each device runs the kernel on its own shard.

Why: XLA cannot see into a Pallas call, so under `jit` with sharded inputs it gathers every
operand whole onto every device and each device runs the kernel on the global batch (the
ViT train step on 8 devices gathered q/k/v and the MLP's input in every layer). `sharded`
wraps a kernel call in `custom_partitioning`, the mechanism JAX's cuDNN attention uses: a
rule names which axes follow the batch (and the heads), the partitioner keeps those axes
split as the operands have them, and the call runs on the local shards. Every other axis is
whole on each device. On one device, or inside `shard_map`, the call is unchanged.

Roles: one letter per axis of each operand and result: 'b' split like the batch, 'h' split
like the heads, '.' whole. The batch's and the heads' mesh axes are read from the first
operand with that role that is split along it.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

_SPLIT_ROLES = 'bh'


def _rule(in_roles: Sequence[str], out_roles: Sequence[str]) -> tuple[str, tuple[str, ...]]:
  """Shardy's rule (`'b r0 h r1, ... -> ...'`) and its whole-axis factors, one per '.'."""
  whole = []

  def mapping(roles):
    names = []
    for role in roles:
      if role in _SPLIT_ROLES:
        names.append(role)
      else:
        whole.append(f'r{len(whole)}')
        names.append(whole[-1])
    return ' '.join(names)

  operands = ', '.join(mapping(r) for r in in_roles)
  results = ', '.join(mapping(r) for r in out_roles)
  return f'{operands} -> {results}', tuple(whole)


def _split_axes(arg_shapes, in_roles) -> dict:
  """{'b': mesh axes, 'h': mesh axes}: as the first operand split along that role has them."""
  found = {role: None for role in _SPLIT_ROLES}
  for shape, roles in zip(arg_shapes, in_roles):
    sharding = getattr(shape, 'sharding', None)
    spec = tuple(getattr(sharding, 'spec', ())) + (None,) * len(roles)
    for role, axes in zip(roles, spec):
      if role in found and found[role] is None and axes is not None:
        found[role] = axes
  return found


def _spec(roles: str, found: dict) -> P:
  return P(*(found[r] if r in _SPLIT_ROLES else None for r in roles))


def sharded(fn: Callable, in_roles: Sequence[str], out_roles: Sequence[str],
            summed: Sequence[int] = ()) -> Callable:
  """`fn(*arrays) -> tuple of arrays`, runnable on each device's shards. `in_roles`,
  `out_roles`: a role string per operand and result (module docstring). `summed`: indices
  of results that are sums over the batch (role without 'b'): each device's partial sum is
  summed over the batch's mesh axes."""
  rule, whole = _rule(in_roles, out_roles)
  call = custom_partitioning(fn)

  def shardings(mesh, found):
    return (tuple(NamedSharding(mesh, _spec(r, found)) for r in in_roles),
            tuple(NamedSharding(mesh, _spec(r, found)) for r in out_roles))

  def infer(mesh, arg_shapes, result_shape):
    del result_shape
    return shardings(mesh, _split_axes(arg_shapes, in_roles))[1]

  def partition(mesh, arg_shapes, result_shape):
    del result_shape
    found = _split_axes(arg_shapes, in_roles)
    arg_shardings, out_shardings = shardings(mesh, found)

    def local(*arrays):
      outs = list(fn(*arrays))
      for i in summed:
        if found['b'] is not None:
          outs[i] = jax.lax.psum(outs[i], found['b'])
      return tuple(outs)

    return mesh, local, out_shardings, arg_shardings

  call.def_partition(partition=partition, infer_sharding_from_operands=infer,
                     sharding_rule=rule, need_replication_factors=whole)
  return lambda *arrays: tuple(call(*arrays))
