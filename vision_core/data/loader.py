"""Batches for training (shuffled, infinite, resumable) and evaluation (every example once).

Built on grain's `DataLoader`: a seeded `IndexSampler` makes the order and every random
augmentation a function of (seed, example index), so a run restored from a checkpointed
iterator state sees exactly the batches an uninterrupted run would have. Each JAX process
reads only its own shard (`ShardByJaxProcess`) and yields its `global_batch / process_count`
rows; `vision_core.mesh.shard_batch` assembles the global array.
"""

from __future__ import annotations

import math
from typing import Any, Iterator, Sequence

import grain.python as grain
import jax
import numpy as np

from vision_core.data import preprocess as pp_lib
from vision_core.errors import UserInputError


def _stack(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
  """Stacks records into `[b, ...]` arrays; unequal image sizes get a clear message."""
  out = {}
  for key in records[0]:
    values = [np.asarray(r[key]) for r in records]
    shapes = {v.shape for v in values}
    if len(shapes) > 1:
      raise UserInputError(
          f'cannot batch {key!r}: examples have different shapes {sorted(shapes)[:4]}; add a '
          'resize / crop op to the preprocessing spec so that every example has one size.')
    out[key] = np.stack(values)
  return out


def per_host_batch_size(global_batch_size: int, *, field: str = 'batch') -> int:
  """The rows each process feeds: `global_batch_size / jax.process_count()`."""
  hosts = jax.process_count()
  if global_batch_size <= 0 or global_batch_size % hosts:
    raise UserInputError(f'{field}={global_batch_size} must be a positive multiple of the '
                         f'{hosts} processes.')
  return global_batch_size // hosts


def _transform(preprocess) -> pp_lib.Preprocess:
  return pp_lib.parse(preprocess) if isinstance(preprocess, str) else preprocess


def train_loader(source, *, global_batch_size: int, preprocess: str | pp_lib.Preprocess,
                 seed: int, num_epochs: int | None = None, worker_count: int = 0,
                 read_threads: int = 8) -> grain.DataLoader:
  """Shuffled batches `{'image': [b, ...], 'label': [b]}`, incomplete last batch dropped.

  `iter(loader)` is a grain iterator with `get_state()` / `set_state()` (bytes), saved by
  `vision_core.checkpointing`. `num_epochs=None` repeats forever, reshuffling each epoch.
  """
  if len(source) < global_batch_size:
    raise UserInputError(f'{source!r} has {len(source)} examples, fewer than one batch of '
                         f'{global_batch_size}.')
  sampler = grain.IndexSampler(
      num_records=len(source), shard_options=grain.ShardByJaxProcess(drop_remainder=True),
      shuffle=True, num_epochs=num_epochs, seed=seed)
  return grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[_transform(preprocess),
                  grain.Batch(per_host_batch_size(global_batch_size), drop_remainder=True,
                              batch_fn=_stack)],
      worker_count=worker_count,
      read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=256))


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Batches every process yields so that each of its (up to ceil(n/hosts)) examples fits."""
  per_host = per_host_batch_size(global_batch_size, field='batch_eval')
  return math.ceil(math.ceil(num_examples / jax.process_count()) / per_host)


def eval_batches(source, *, global_batch_size: int, preprocess: str | pp_lib.Preprocess,
                 worker_count: int = 0, read_threads: int = 8
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `source` exactly once, in order, as `{'image', 'label', 'mask'}`.

  The last batch is padded (with copies of its first row) to the full size, and `mask`
  [b] is False on padding; every process yields the same number of batches (all-padding
  ones where its shard is shorter), as collective eval steps require.
  """
  per_host = per_host_batch_size(global_batch_size, field='batch_eval')
  sampler = grain.IndexSampler(
      num_records=len(source), shard_options=grain.ShardByJaxProcess(drop_remainder=False),
      shuffle=False, num_epochs=1, seed=0)
  loader = grain.DataLoader(
      data_source=source, sampler=sampler,
      operations=[_transform(preprocess),
                  grain.Batch(per_host, drop_remainder=False, batch_fn=_stack)],
      worker_count=worker_count,
      read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=256))
  template = None
  yielded = 0
  for batch in loader:
    n = len(batch['label'])
    batch = {k: np.concatenate([v, np.repeat(v[:1], per_host - n, 0)]) if n < per_host else v
             for k, v in batch.items()}
    batch['mask'] = np.arange(per_host) < n
    template = template or {k: v[:1] for k, v in batch.items()}
    yielded += 1
    yield batch
  total = num_eval_batches(len(source), global_batch_size)
  if template is None and yielded < total:
    raise UserInputError(f'{source!r}: this process has no examples to evaluate.')
  for _ in range(total - yielded):
    padding = {k: np.repeat(v, per_host, 0) for k, v in template.items()}
    padding['mask'] = np.zeros(per_host, bool)
    yield padding
