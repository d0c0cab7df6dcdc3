"""The device mesh: one `('data', 'model')` mesh for every family, on 1 CPU or a TPU pod.

Batches are sharded over 'data'; parameters are replicated by default (sharding rules that
split them over 'data' or 'model' live beside the training code that chooses them). Every
function here is multi-host safe: each process feeds its own part of the global batch.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vision_core.errors import UserInputError

AXES = ('data', 'model')


def initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when launched as one process of several.

  Cloud TPU VMs and SLURM/Open MPI launches are detected by JAX itself; a plain single-process
  run (the usual case) does nothing.
  """
  env = os.environ
  multi = (bool(env.get('JAX_COORDINATOR_ADDRESS'))
           or ',' in env.get('TPU_WORKER_HOSTNAMES', '')
           or int(env.get('SLURM_NTASKS', '1')) > 1
           or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1)
  if multi and not jax.distributed.is_initialized():
    jax.distributed.initialize()


def make_mesh(shape: Sequence[int] = (-1, 1), devices: Sequence[Any] | None = None) -> Mesh:
  """A `('data', 'model')` mesh over all devices; one `-1` entry takes what is left.

  Args:
    shape: `(data, model)` sizes, e.g. `(-1, 1)` for pure data parallelism, `(4, 2)` for four
      data-parallel groups of two tensor-parallel devices.
    devices: defaults to `jax.devices()` (every device of every host).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = list(shape)
  if len(shape) != len(AXES):
    raise UserInputError(f'mesh shape {tuple(shape)}: expected two sizes (data, model).')
  if shape.count(-1) > 1:
    raise UserInputError(f'mesh shape {tuple(shape)}: at most one size may be -1.')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if known <= 0 or len(devices) % known:
      raise UserInputError(
          f'mesh shape {tuple(shape)}: {len(devices)} devices cannot be split into groups of '
          f'{known}.')
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise UserInputError(
        f'mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, but there are '
        f'{len(devices)} ({devices[0].platform}).')
  grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, AXES)


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full array on every device."""
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest whole: `[B, ...]`."""
  return NamedSharding(mesh, P('data', *([None] * (ndim - 1))))


def check_batch_size(batch_size: int, mesh: Mesh, *, field: str = 'batch') -> None:
  """Raises a clear error if a global batch cannot be split evenly over the 'data' axis."""
  n = mesh.shape['data']
  if batch_size % n:
    raise UserInputError(
        f'{field}={batch_size} is not divisible by the {n} devices of the mesh\'s data axis; '
        f'use a multiple of {n} (e.g. {max(n, batch_size // n * n)}).')


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places this host's part of a batch (a pytree of `[b, ...]` numpy arrays) on the mesh.

  On one host `b` is the global batch; on several, each host passes its own rows and the
  result is one global array of `b * process_count` rows sharded over 'data'.
  """
  def put(x):
    x = np.asarray(x)
    sharding = batch_sharding(mesh, x.ndim)
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x)
  return jax.tree.map(put, batch)


def to_host(tree: Any) -> Any:
  """Fetches a pytree of (possibly sharded, multi-host) arrays to numpy on every host."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)
