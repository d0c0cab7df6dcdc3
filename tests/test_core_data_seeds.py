"""Random streams of the input pipeline: distinct for every (seed, position) pair."""

import numpy as np
import pytest

from vision_core import data
from vision_core.data import loader
from vision_core.errors import UserInputError


def _draws(sampler, index, n=4):
  """The first `n` 64-bit draws of the augmentation generator of sampler record `index`."""
  return sampler[index].rng.integers(0, 2**63, n).tolist()


def test_adjacent_seeds_do_not_share_augmentations():
  """Seed s at position g + 1 used to replay seed s + 1 at position g (key = seed + g), so
  runs with seeds 0, 1, 2, ... (error bars) had the same random crops one record apart."""
  samplers = {s: data.GlobalBatchSampler(50, per_process_batch=5, seed=s) for s in range(4)}
  for s in range(3):
    for g in range(20):
      assert _draws(samplers[s], g + 1) != _draws(samplers[s + 1], g)
  firsts = {_draws(samplers[s], g, n=1)[0] for s in range(4) for g in range(50)}
  assert len(firsts) == 4 * 50


def test_no_seed_is_not_seed_zero():
  """`seed=None` (in order, as evaluation reads) has its own streams, not those of seed 0."""
  unseeded = data.GlobalBatchSampler(20, per_process_batch=4, seed=None)
  zero = data.GlobalBatchSampler(20, per_process_batch=4, seed=0)
  assert [unseeded[g].record_key for g in range(20)] == list(range(20))
  for g in range(20):
    assert _draws(unseeded, g) != _draws(zero, g)
    assert _draws(unseeded, g) == loader.augmentation_rng(None, g).integers(0, 2**63, 4).tolist()


def test_streams_are_a_function_of_seed_and_position():
  """Process count and batch size change which sampler index reads a position, not its
  generator: what resuming on another number of processes relies on."""
  one = data.GlobalBatchSampler(48, per_process_batch=6, seed=7)
  two = [data.GlobalBatchSampler(48, per_process_batch=3, seed=7, process_index=p,
                                 process_count=2) for p in range(2)]
  for index in range(24):
    p, j = index % 2, index // 2  # process p reads its j-th record at index j * 2 + p
    position = int(two[p].positions(j // 3, j % 3))
    assert _draws(two[p], index) == _draws(one, position)
  assert (loader.augmentation_rng(7, 2**40).integers(0, 2**63, 4).tolist()
          == loader.augmentation_rng(np.int64(7), np.int64(2**40)).integers(0, 2**63, 4).tolist())


@pytest.mark.parametrize('seed', [-1, 2**32, 2**70, 1.5, '3', True])
def test_seeds_outside_the_shuffle_range_are_named(seed):
  with pytest.raises(UserInputError, match=r'seed=.*expected an integer in \[0, 4294967295\]'):
    data.train_loader(data.ArraySource(np.zeros((8, 2, 2, 3), np.uint8), np.zeros(8, np.int64)),
                      global_batch_size=4, preprocess='', seed=seed)


def test_largest_seed_is_accepted():
  sampler = data.GlobalBatchSampler(10, per_process_batch=2, seed=2**32 - 1)
  assert sorted(sampler[g].record_key for g in range(10)) == list(range(10))


def test_adjacent_seeds_do_not_share_epoch_orders():
  """grain shuffles epoch e of `shuffle(seed)` with seed + e: seed s's second epoch was
  seed s + 1's first, so runs with adjacent seeds saw the same orders one epoch apart."""
  n = 30
  orders = {}
  for s in range(4):
    sampler = data.GlobalBatchSampler(n, per_process_batch=5, seed=s)
    keys = [sampler[g].record_key for g in range(5 * n)]
    for e in range(5):
      assert sorted(keys[e * n:(e + 1) * n]) == list(range(n))  # each epoch: every record once
      orders[s, e] = tuple(keys[e * n:(e + 1) * n])
  assert len(set(orders.values())) == len(orders)


def test_epoch_orders_do_not_depend_on_the_reading_order():
  """The last epoch's shuffle is cached; reading positions out of order changes nothing."""
  sampler = data.GlobalBatchSampler(11, per_process_batch=1, seed=9)
  forward = [sampler[g].record_key for g in range(44)]
  fresh = data.GlobalBatchSampler(11, per_process_batch=1, seed=9)
  interleaved = [g for pair in zip(range(22), reversed(range(22, 44))) for g in pair]
  read = {g: fresh[g].record_key for g in interleaved}  # epochs 0-1 and 2-3, alternately
  assert forward == [read[g] for g in range(44)]
