"""Batches for training (shuffled, infinite, resumable) and evaluation (every example once).

Built on grain's `DataLoader` with one sampler, `GlobalBatchSampler`: the order and every
random augmentation are a function of (seed, position in the stream of global batches). So
a run restored from a checkpointed iterator state sees exactly the batches an uninterrupted
run would have, the global batches are the same whether one process or several feed them
(with or without grain workers), and a run can resume on another number of processes
(`seek`). Each JAX process reads only its own rows of each global batch and yields its
`global_batch / process_count` of them; `vision_core.mesh.shard_batch` assembles the global
array. Evaluation goes through the test split in order, global batch by global batch, the
last one padded and masked.
"""

from __future__ import annotations

import atexit
import gc
import json
import math
import sys
from typing import Any, Iterator, Sequence

import grain.python as grain
import jax
import numpy as np

from vision_core import seeds
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


# The key word of `seed=None`: no int seed has it, so None never shares a stream with one.
_NO_SEED_WORD = seeds.MAX_SEED + 1


def augmentation_rng(seed: int | None, position: int) -> np.random.Generator:
  """The generator of the random ops of the record at global `position` of a loader's stream.

  Philox's 128-bit key is the two 64-bit words [position, seed] (`seed=None`: 2**32, which no
  int seed can be), so distinct (seed, position) pairs get distinct keys. Adding the seed to
  the position, as grain's samplers do, made seed s at position g + 1 replay seed s + 1 at
  position g: runs with adjacent seeds shared their augmentations, one record apart.
  """
  word = _NO_SEED_WORD if seed is None else int(seed)
  return np.random.Generator(np.random.Philox(key=np.array([position, word], np.uint64)))


def shuffle_seed(seed: int, epoch: int) -> int:
  """The 32-bit seed of grain's shuffle of `epoch`: a hash of the pair (seed, epoch).

  grain's own `MapDataset.shuffle(seed)` shuffles epoch e with seed + e, so seed s replayed
  the orders of seed s + 1 one epoch late. Hashed pairs of 32 bits can still meet, but by
  chance (about one pair of epochs in 2**32), not for every run with adjacent seeds.
  """
  return int(np.random.SeedSequence((int(seed), int(epoch))).generate_state(1)[0])


class GlobalBatchSampler:
  """grain sampler for process `process_index` of `process_count`: rows
  `[p * b, (p + 1) * b)` of every global batch of `process_count * b` examples.

  The global stream is epoch after epoch of `range(num_records)`, epoch e shuffled by grain
  with the seed `shuffle_seed(seed, e)` (`seed=None`: in order), and record `g` of it gets
  the augmentation generator `augmentation_rng(seed, g)`. Both derive from the pair, never
  from a sum, so runs with different seeds share neither orders nor augmentations. So the
  global batches, and every random crop and flip in them, depend neither on the number of
  processes nor on the number of grain workers.

  The stream holds whole global batches: with `pad_last` the last one is filled up with
  record 0 (positions >= `num_epochs * num_records`, for the caller to mask), else it is
  dropped. With workers, the count of batches is rounded to whole rounds of workers (up with
  `pad_last`, down without), since each worker makes whole batches of its own records.
  """

  def __init__(self, num_records: int, *, per_process_batch: int, seed: int | None,
               process_index: int = 0, process_count: int = 1, worker_count: int = 0,
               num_epochs: int | None = None, pad_last: bool = False):
    seeds.check_seed(seed, allow_none=True)  # grain's shuffle takes 32 bits
    self._epoch_records = (-1, None)  # (epoch, its shuffled records): the last one read
    self._num_records, self._seed, self._batch = num_records, seed, per_process_batch
    self._index, self._count = process_index, process_count
    self._workers = max(worker_count, 1)
    self.global_batch = per_process_batch * process_count
    self.num_positions = sys.maxsize if num_epochs is None else num_epochs * num_records
    round_size = self.global_batch * self._workers
    rounds = (math.ceil if pad_last else math.floor)(self.num_positions / round_size)
    self._length = sys.maxsize if num_epochs is None else rounds * round_size
    self.shard_options = grain.ShardOptions(shard_index=process_index, shard_count=process_count,
                                            drop_remainder=True)

  def __repr__(self) -> str:  # grain checks it against the checkpointed iterator's
    return (f'GlobalBatchSampler(num_records={self._num_records}, '
            f'per_process_batch={self._batch}, seed={self._seed}, '
            f'process_index={self._index}, process_count={self._count}, '
            f'workers={self._workers}, length={self._length})')

  def positions(self, batch: int, rows: Any = None) -> Any:
    """Global positions of `rows` (default: all `[b]`) of this process's `batch`-th batch."""
    rows = np.arange(self._batch) if rows is None else rows
    return (batch * self._count + self._index) * self._batch + rows

  def __len__(self) -> int:
    return self._length

  def __getitem__(self, index: int) -> grain.RecordMetadata:
    if index < 0 or index >= self._length:
      raise IndexError(f'sampler index {index} out of range [0, {self._length})')
    # The DataLoader asks this process for indices `j * process_count + process_index`, j
    # counting its records. Worker k of w reads j = k, k + w, ..., batches b of them at a
    # time, and the batches come out round-robin over the workers.
    own = index // self._count
    worker, nth = own % self._workers, own // self._workers
    worker_batch, row = divmod(nth, self._batch)
    position = self.positions(worker_batch * self._workers + worker, row)
    rng = augmentation_rng(self._seed, position)
    # Positions past the data pad the last batch (with record 0), for the caller to mask.
    key = self._record(position) if position < self.num_positions else 0
    return grain.RecordMetadata(index=index, record_key=key, rng=rng)

  def _record(self, position: int) -> int:
    """The record at global `position`: its epoch's permutation of the records."""
    if self._seed is None:
      return position % self._num_records
    epoch, offset = divmod(int(position), self._num_records)
    cached, records = self._epoch_records  # one read: grain may call from several threads
    if cached != epoch:
      records = grain.MapDataset.range(self._num_records).shuffle(
          seed=shuffle_seed(self._seed, epoch))
      self._epoch_records = (epoch, records)
    return records[offset]


def _finish_shared_memory_unlinks() -> None:
  """Waits for grain's pending unlinks of the shared memory of batches already read.

  With workers, batches arrive in shared memory that the reading process unlinks when they
  are freed, in a background thread. A process that exits right after its last batch (the
  final eval) left some undone: Python's resource tracker then unlinked them and warned
  about "leaked shared_memory objects". grain has no public call for this; if its internals
  change, the only loss is that warning.
  """
  try:
    from grain._src.python.ipc import shared_memory_array  # pylint: disable=g-import-not-at-top
    pool = shared_memory_array.SharedMemoryArray._del_thread_pool  # pylint: disable=protected-access
  except (ImportError, AttributeError):
    return
  if pool is not None:
    gc.collect()  # batches only garbage holds, so that their unlinks are queued now
    pool.apply(lambda: None)  # grain's pool has one thread: this runs after all queued


def _grain_workers_ready(worker_count: int) -> None:
  """Prepares this process for grain worker processes.

  grain reads its absl flags when it starts workers; outside an absl app (a notebook, a
  plain script) they are unparsed and it fails with UnparsedFlagAccessError. Marking them
  parsed gives them their defaults. At exit, pending shared-memory unlinks are waited for.
  """
  if worker_count > 0:
    from absl import flags  # pylint: disable=g-import-not-at-top
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    global _UNLINKS_AT_EXIT
    if not _UNLINKS_AT_EXIT:
      atexit.register(_finish_shared_memory_unlinks)
      _UNLINKS_AT_EXIT = True


_UNLINKS_AT_EXIT = False


def _transform(preprocess) -> pp_lib.Preprocess:
  return pp_lib.parse(preprocess) if isinstance(preprocess, str) else preprocess


def train_loader(source, *, global_batch_size: int, preprocess: str | pp_lib.Preprocess,
                 seed: int, num_epochs: int | None = None, worker_count: int = 0,
                 read_threads: int = 8, batch_field: str = 'global_batch_size'
                 ) -> grain.DataLoader:
  """Shuffled batches `{'image': [b, ...], 'label': [b]}`, incomplete last batch dropped.

  `iter(loader)` is a grain iterator with `get_state()` / `set_state()` (bytes), saved by
  `vision_core.checkpointing`. `num_epochs=None` repeats forever, reshuffling each epoch.
  With `num_epochs` and `worker_count` w > 0 the stream ends at a whole round of w batches
  (each worker makes whole batches of its own records), so up to w - 1 more full batches
  are dropped than without workers: 20 examples, batch 4, 1 epoch give 5 batches, 3 with
  3 workers. The batches that are read are the same. `batch_field`: the config field the
  batch size came from, named in the messages about it.
  """
  per_host = per_host_batch_size(global_batch_size, field=batch_field)
  if len(source) < global_batch_size:
    raise UserInputError(f'{source!r} has {len(source)} examples, fewer than one batch: '
                         f'{batch_field}={global_batch_size}. Lower {batch_field} (or add '
                         'examples).')
  _grain_workers_ready(worker_count)
  sampler = GlobalBatchSampler(len(source), per_process_batch=per_host, seed=seed,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(), worker_count=worker_count,
                               num_epochs=num_epochs)
  return grain.DataLoader(
      data_source=source, sampler=sampler, shard_options=sampler.shard_options,
      operations=[_transform(preprocess),
                  grain.Batch(per_host, drop_remainder=True, batch_fn=_stack)],
      worker_count=worker_count,
      read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=256))


def seek(iterator, *, batches: int, global_batch_size: int) -> None:
  """Moves a fresh `train_loader` iterator to just after its first `batches` batches without
  reading them (the position after `batches` steps of one batch each).

  The global batches are a function of their number (`GlobalBatchSampler`), so this resumes
  a run whose checkpointed positions were saved by another number of processes. It fills
  grain's iterator state (format version 2): per worker, the last sampler index it read.
  """
  state = json.loads(iterator.get_state())
  if state.get('version') != 2:
    raise NotImplementedError(f'grain iterator state version {state.get("version")}; seek '
                              'knows version 2.')
  processes, index = jax.process_count(), jax.process_index()
  per_host = per_host_batch_size(global_batch_size)
  workers = state['worker_count']
  # Batch n comes from worker n % w; worker i has made ceil((batches - i) / w) of the first
  # `batches` and read b records for each, every (w * processes)-th sampler index.
  rounds = max(workers, 1)
  made = [max(0, -(-(batches - i) // rounds)) for i in range(rounds)]
  stride = rounds * processes
  state['last_seen_indices'] = {str(i): index - stride + i * processes + n * per_host * stride
                                for i, n in enumerate(made)}
  state['last_worker_index'] = batches % workers - 1 if workers else -1
  iterator.set_state(json.dumps(state).encode())


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  """Global batches that hold every example (the last one padded)."""
  per_host_batch_size(global_batch_size, field='batch_eval')
  return math.ceil(num_examples / global_batch_size)


def eval_batches(source, *, global_batch_size: int, preprocess: str | pp_lib.Preprocess,
                 worker_count: int = 0, read_threads: int = 8
                 ) -> Iterator[dict[str, np.ndarray]]:
  """Every example of `source` exactly once, in order, as `{'image', 'label', 'mask'}`.

  Global batch k holds examples `[k * B, (k + 1) * B)` whatever the number of processes,
  each process yielding its `B / process_count` rows of it. The last batch is padded (with
  copies of example 0) to the full size, and `mask` [b] is False on padding, so every
  process yields `num_eval_batches` batches, as collective eval steps require.
  """
  per_host = per_host_batch_size(global_batch_size, field='batch_eval')
  if not len(source):
    raise UserInputError(f'{source!r} has no examples to evaluate.')
  _grain_workers_ready(worker_count)
  sampler = GlobalBatchSampler(len(source), per_process_batch=per_host, seed=None,
                               process_index=jax.process_index(),
                               process_count=jax.process_count(), worker_count=worker_count,
                               num_epochs=1, pad_last=True)
  loader = grain.DataLoader(
      data_source=source, sampler=sampler, shard_options=sampler.shard_options,
      operations=[_transform(preprocess),
                  grain.Batch(per_host, drop_remainder=True, batch_fn=_stack)],
      worker_count=worker_count,
      read_options=grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=256))
  total = num_eval_batches(len(source), global_batch_size)
  for k, batch in enumerate(loader):
    if k < total:  # with workers, whole rounds of them: the rest is padding only
      batch['mask'] = sampler.positions(k) < len(source)
      yield batch
