"""The device mesh: one `('data', 'model')` mesh for every family, on 1 CPU or a TPU pod.

Batches are sharded over 'data'; parameters are replicated by default (sharding rules that
split them over 'data' or 'model' live beside the training code that chooses them). Every
function here is multi-host safe: each process feeds its own part of the global batch.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from vision_core.errors import UserInputError

AXES = ('data', 'model')


def initialize_distributed() -> None:
  """Calls `jax.distributed.initialize()` when launched as one process of several.

  Cloud TPU VMs and SLURM/Open MPI launches are detected by JAX itself. Anywhere else (GPU
  boxes, or several processes on one machine) set `JAX_COORDINATOR_ADDRESS=host:port`,
  `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` (0 on the coordinator's host) in every process.
  A plain single-process run (the usual case) does nothing.
  """
  env = os.environ
  multi = (bool(env.get('JAX_COORDINATOR_ADDRESS'))
           or ',' in env.get('TPU_WORKER_HOSTNAMES', '')
           or int(env.get('SLURM_NTASKS', '1')) > 1
           or int(env.get('OMPI_COMM_WORLD_SIZE', '1')) > 1)
  if not multi:
    # Without a coordinator every process would run alone as process 0 of 1, all writing
    # the same workdir; the count and index say several were meant.
    if env.get('JAX_NUM_PROCESSES', '1') not in ('', '1') or env.get('JAX_PROCESS_ID'):
      raise UserInputError(
          'JAX_NUM_PROCESSES / JAX_PROCESS_ID are set but JAX_COORDINATOR_ADDRESS is not: set '
          "it to host:port of process 0's machine in every process (outside a TPU VM, SLURM "
          'or MPI, which JAX detects itself).')
    return
  if jax.distributed.is_initialized():
    return
  # JAX itself reads only the coordinator's address from the environment; the count and the
  # index come from a detected cluster (TPU metadata, SLURM, MPI) or from these two.
  explicit = {}
  for name, key in (('JAX_NUM_PROCESSES', 'num_processes'), ('JAX_PROCESS_ID', 'process_id')):
    value = env.get(name, '')
    if value:
      if not value.isdigit():
        raise UserInputError(f'{name}={value!r}: expected a non-negative integer.')
      explicit[key] = int(value)
  if len(explicit) == 1:
    raise UserInputError('set both JAX_NUM_PROCESSES and JAX_PROCESS_ID, or neither (then the '
                         'cluster, e.g. a TPU VM or SLURM, must provide them).')
  if explicit and not explicit['process_id'] < explicit['num_processes']:
    raise UserInputError(f'JAX_PROCESS_ID={explicit["process_id"]}: expected less than '
                         f'JAX_NUM_PROCESSES={explicit["num_processes"]}.')
  try:
    jax.distributed.initialize(**explicit)
  except ValueError as e:  # e.g. a bare JAX_COORDINATOR_ADDRESS outside a known cluster
    raise UserInputError(
        f'multi-process start-up failed: {e}. Outside a TPU VM, SLURM or MPI, set '
        'JAX_NUM_PROCESSES and JAX_PROCESS_ID beside JAX_COORDINATOR_ADDRESS.') from e


def one_cpu_device_per_core(max_devices: int = 8) -> int | None:
  """Gives the CPU backend one XLA device per core (at most `max_devices`); call it before
  the first JAX operation. Returns the device count set, or None where it left things alone.

  Why: a batch sharded over 'data' then runs one slice per core. XLA:CPU splits each large
  op of a single device over the cores, but leaves them idle between the many small ops
  of a GAN latent search; two devices keep both busy (measured on a 2-core CPU: the search
  1.14-1.25x more image-steps/s, the compress CLI 1.34x end to end; docs/benchmarks.md run
  11). A computation on one device still uses every core. Left alone: a count the user
  chose (`JAX_NUM_CPU_DEVICES`, XLA_FLAGS' `--xla_force_host_platform_device_count`,
  `jax_num_cpu_devices`), a single core, and a process whose JAX is already running (its
  device count is fixed). On a GPU or TPU host the default backend is the accelerator,
  which this does not touch.
  """
  if (os.environ.get('JAX_NUM_CPU_DEVICES')
      or 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', '')
      or jax.config.jax_num_cpu_devices != -1):
    return None
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  count = min(cores or 1, max_devices)
  if count < 2:
    return None
  try:
    jax.config.update('jax_num_cpu_devices', count)
  except RuntimeError:  # JAX already ran something (e.g. called from a test or a notebook).
    return None
  return count


def make_mesh(shape: Sequence[int] = (-1, 1), devices: Sequence[Any] | None = None) -> Mesh:
  """A `('data', 'model')` mesh over all devices; one `-1` entry takes what is left.

  Args:
    shape: `(data, model)` sizes, e.g. `(-1, 1)` for pure data parallelism, `(4, 2)` for four
      data-parallel groups of two tensor-parallel devices.
    devices: defaults to `jax.devices()` (every device of every host).
  """
  devices = list(jax.devices() if devices is None else devices)
  if not isinstance(shape, (list, tuple)) or len(shape) != len(AXES) or not all(
      isinstance(s, (int, np.integer)) and (s > 0 or s == -1) for s in shape):
    raise UserInputError(f'mesh shape {shape!r}: expected two sizes (data, model), each '
                         '> 0 or -1 (what is left), e.g. (-1, 1).')
  shape = list(shape)
  if shape.count(-1) > 1:
    raise UserInputError(f'mesh shape {tuple(shape)}: at most one size may be -1.')
  known = int(np.prod([s for s in shape if s != -1]))
  if -1 in shape:
    if len(devices) % known:
      raise UserInputError(
          f'mesh shape {tuple(shape)}: {len(devices)} devices cannot be split into groups of '
          f'{known}.')
    shape[shape.index(-1)] = len(devices) // known
  if int(np.prod(shape)) != len(devices):
    raise UserInputError(
        f'mesh shape {tuple(shape)} needs {int(np.prod(shape))} devices, but there are '
        f'{len(devices)} ({devices[0].platform}).')
  grid = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def make_config_mesh(shape: Sequence[int], *, field: str = 'mesh') -> Mesh:
  """The mesh of a config's `mesh` field, `(data, model)`. A fixed shape smaller than the
  device count (single process) uses the first devices, e.g. (1, 1) for a one-device run on
  a multi-device machine; each process must hold whole rows of the data axis."""
  shape = tuple(shape)
  devices = jax.devices()
  size = int(np.prod(shape))
  if -1 not in shape and 0 < size < len(devices) and jax.process_count() == 1:
    logging.warning('%s %s uses %d of the %d devices.', field, shape, size, len(devices))
    devices = devices[:size]
  mesh = make_mesh(shape, devices)
  check_data_rows_per_process(mesh, field=field)
  return mesh


def local_data_mesh() -> Mesh:
  """Every device of this process on 'data': for work each host does alone (features,
  samples), with the parameters replicated and the rows split."""
  return make_mesh((-1, 1), jax.local_devices())


def rows_per_batch(batch_size: int, rows: int, mesh: Mesh) -> int:
  """The rows of each batch when `rows` are processed `batch_size` at a time (fewer if there
  are fewer rows, at least one) split over the mesh's 'data' axis: rounded up to a multiple
  of its size, so every device gets whole rows (the last batch is padded)."""
  devices = data_size(mesh)
  return -(-max(1, min(batch_size, rows)) // devices) * devices


def auto_axes(mesh: Mesh) -> Mesh:
  """`mesh` with every axis in Auto mode; `mesh` itself where they already are.

  Why: `jax.make_mesh` builds Explicit-axis meshes by default (it does in jax 0.10). There
  an array's sharding is part of its type, and an op whose operands are sharded differently
  is refused (the ViT's class token, replicated, concatenated to a batch-sharded sequence).
  Our steps are written for Auto axes, where XLA's partitioner propagates the shardings, so
  a mesh the user built either way is used as its Auto twin (the same devices and names).
  A compiled step takes numpy batches or `shard_batch`'s arrays; jit refuses arrays that
  the user placed on the Explicit mesh itself (its inputs must share one mesh).
  """
  if all(t == AxisType.Auto for t in mesh.axis_types):
    return mesh
  return Mesh(mesh.devices, mesh.axis_names, axis_types=(AxisType.Auto,) * mesh.devices.ndim)


def replicated(mesh: Mesh) -> NamedSharding:
  """The same full array on every device."""
  return NamedSharding(auto_axes(mesh), P())


def data_size(mesh: Mesh) -> int:
  """The size of the mesh's 'data' axis, which batches are split over; a clear error for a
  mesh (the user's own) that has none."""
  if 'data' not in mesh.axis_names:
    raise UserInputError(f"mesh axes {mesh.axis_names}: expected a 'data' axis to split "
                         "batches over, e.g. jax.make_mesh((n,), ('data',)) or "
                         'vision_core.mesh.make_mesh().')
  return mesh.shape['data']


def batch_sharding(mesh: Mesh, ndim: int = 1) -> NamedSharding:
  """Leading (batch) axis split over 'data', the rest whole: `[B, ...]`."""
  data_size(mesh)
  return NamedSharding(auto_axes(mesh), P('data', *([None] * (ndim - 1))))


def check_batch_size(batch_size: int, mesh: Mesh, *, field: str = 'batch') -> None:
  """Raises a clear error if a global batch cannot be split evenly over the 'data' axis."""
  n = data_size(mesh)
  if batch_size <= 0:  # 0 and -n divide evenly; the loader's message names no field.
    raise UserInputError(f'{field}={batch_size}: expected > 0 (a multiple of the {n} devices '
                         "of the mesh's data axis).")
  if batch_size % n:
    raise UserInputError(
        f'{field}={batch_size} is not divisible by the {n} devices of the mesh\'s data axis; '
        f'use a multiple of {n} (e.g. {max(n, batch_size // n * n)}).')


@functools.lru_cache(maxsize=None)  # shard_batch asks it at every step, of the same mesh
def check_data_rows_per_process(mesh: Mesh, *, field: str = 'mesh') -> None:
  """Raises unless each index of the mesh's 'data' axis lies within one process, every
  process holding as many.

  Why: each process reads its own rows of every batch (vision_core.data), and `shard_batch`
  puts them on the data indices of its own devices. A data index whose devices sit in two
  processes would get two processes' different rows for one shard: JAX takes them for copies
  of it and the run trains on half its batch and scores half its test split, silently.
  """
  processes = jax.process_count()
  if processes == 1 or 'data' not in mesh.axis_names:  # (batch_sharding names the latter)
    return
  data = mesh.axis_names.index('data')
  rows = np.moveaxis(mesh.devices, data, 0).reshape(mesh.devices.shape[data], -1)
  owners = [{d.process_index for d in row} for row in rows]
  per_process = collections.Counter(next(iter(o)) for o in owners if len(o) == 1)
  if any(len(o) > 1 for o in owners) or sorted(per_process.values()) != (
      [len(rows) // processes] * processes):
    shape = tuple(mesh.devices.shape)
    raise UserInputError(
        f'{field} {shape} over {processes} processes: each process feeds its own images to its '
        f'own indices of the data axis, so every index of it must lie within one process, and '
        f'every process hold as many. Use a data size that is a multiple of {processes}, '
        f'e.g. ({processes}, {mesh.devices.size // processes}), not a model axis across '
        'processes.')


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places this host's part of a batch (a pytree of `[b, ...]` numpy arrays) on the mesh.

  On one host `b` is the global batch; on several, each host passes its own rows and the
  result is one global array of `b * process_count` rows sharded over 'data'.
  """
  def put(x):
    x = np.asarray(x)
    # Said here, not as an IndivisibleError from deep in device_put.
    if not x.ndim:
      raise UserInputError('shard_batch: a scalar has no batch axis; expected [B, ...] arrays.')
    sharding = batch_sharding(mesh, x.ndim)  # (which checks the mesh has a 'data' axis)
    rows, n = x.shape[0] * jax.process_count(), mesh.shape['data']
    if rows % n:
      raise UserInputError(
          f"shard_batch: {rows} rows ({x.shape} per host) cannot be split over the {n} "
          f"devices of the mesh's data axis; pad the batch to a multiple of {n}.")
    if jax.process_count() == 1:
      return jax.device_put(x, sharding)
    return jax.make_array_from_process_local_data(sharding, x, (rows, *x.shape[1:]))
  check_data_rows_per_process(mesh, field='shard_batch: mesh')
  return jax.tree.map(put, batch)


def to_host(tree: Any) -> Any:
  """Fetches a pytree of (possibly sharded, multi-host) arrays to numpy on every host."""
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return jax.tree.map(np.asarray, tree)
