"""vision_core.fingerprint against a numpy evaluation of its formula, and the check of
restored checkpoints built on it."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from vision_core import checkpointing, fingerprint
from vision_core.errors import UserInputError

_M32 = 0xFFFFFFFF
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _mix(z: np.ndarray) -> np.ndarray:
  """murmur3's 32-bit finaliser on uint64 values below 2**32."""
  z = z ^ (z >> 16)
  z = (z * 0x85EBCA6B) & _M32
  z = z ^ (z >> 13)
  z = (z * 0xC2B2AE35) & _M32
  return z ^ (z >> 16)


def _numpy_fingerprint(x: np.ndarray) -> str:
  """The module docstring's formula, on the array's bytes as numpy holds them."""
  x = np.ascontiguousarray(x)
  word_type = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint32}[x.dtype.itemsize]
  words = np.frombuffer(x.tobytes(), word_type).astype(np.uint64)
  index = np.arange(words.size, dtype=np.uint64)
  a = int(np.sum((words * (2 * index + 1)) & _M32)) & _M32
  b = int(np.sum(_mix(words ^ _mix(index)))) & _M32
  return f'{a:08x}{b:08x}'


@pytest.mark.parametrize('dtype', [np.float32, ml_dtypes.bfloat16, np.float16, np.int8,
                                   np.uint8, np.int32, np.uint32, np.bool_])
@pytest.mark.parametrize('shape', [(), (0,), (7,), (3, 5, 7)])
def test_matches_the_formula_evaluated_in_numpy(dtype, shape):
  rng = np.random.default_rng(sum(shape) + np.dtype(dtype).num)
  x = (rng.normal(size=shape) * 50).astype(dtype)
  got = fingerprint.fingerprints({'x': jnp.asarray(x), 'host': x})
  assert got == {'x': _numpy_fingerprint(x), 'host': _numpy_fingerprint(x)}


def test_the_same_on_every_mesh_and_sharding():
  x = np.random.default_rng(0).normal(size=(16, 24)).astype(np.float32)
  expected = _numpy_fingerprint(x)
  for shape, spec in [((8,), P('data')), ((8,), P(None, 'data')), ((4, 2), P('data', 'model')),
                      ((4, 2), P('model', 'data')), ((4, 2), P())]:
    mesh = jax.make_mesh(shape, ('data', 'model')[:len(shape)])
    placed = jax.device_put(x, NamedSharding(mesh, spec))
    assert fingerprint.fingerprints([placed]) == {'0': expected}, (shape, spec)


_MANY_SHARDED_ARRAYS = '''
import numpy as np, jax
from jax.sharding import NamedSharding, PartitionSpec as P
from vision_core import fingerprint, mesh as mesh_lib
mesh = mesh_lib.make_mesh((4, 2))
cases = [((4, 8, 32), P('model', None, None)), ((32, 128), P(None, 'model')),
         ((512, 32), P('data', None)), ((32,), P())]
tree = [jax.device_put(np.full(shape, i, np.float32), NamedSharding(mesh, spec))
        for i in range(200) for shape, spec in [cases[i % 4]]]
print(len(fingerprint.fingerprints(tree)))
'''


def test_many_sharded_arrays_at_once_on_cpu_devices():
  """200 arrays over a (4, 2) mesh of CPU devices: with every program queued at once,
  XLA:CPU's all-reduces deadlocked and the process aborted after a 40 s timeout. In a child
  process, so that such an abort fails this test rather than the test worker."""
  result = subprocess.run([sys.executable, '-c', _MANY_SHARDED_ARRAYS], capture_output=True,
                          text=True, timeout=300, check=False, cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
  assert result.returncode == 0 and result.stdout.split() == ['200'], result.stderr[-2000:]


@pytest.mark.parametrize('dtype', [np.float32, ml_dtypes.bfloat16, np.int8])
def test_every_single_flipped_bit_changes_it(dtype):
  x = np.random.default_rng(1).normal(size=(4, 5)).astype(dtype)
  raw = np.frombuffer(x.tobytes(), np.uint8)
  original = fingerprint.fingerprints([x])['0']
  seen = {original}
  for bit in range(raw.size * 8):
    flipped = raw.copy()
    flipped[bit // 8] ^= 1 << (bit % 8)
    seen.add(fingerprint.fingerprints([flipped.view(dtype).reshape(x.shape)])['0'])
  assert len(seen) == raw.size * 8 + 1  # all differ from the original and from each other


def test_swapped_elements_change_it():
  x = np.arange(64, dtype=np.float32)
  swapped = x.copy()
  swapped[[3, 40]] = swapped[[40, 3]]
  assert fingerprint.fingerprints([x]) != fingerprint.fingerprints([swapped])


def test_a_prng_key_is_fingerprinted_by_its_data():
  key = jax.random.key(7)
  assert (fingerprint.fingerprints({'k': key})['k'] ==
          _numpy_fingerprint(np.asarray(jax.random.key_data(key))))


def _incompressible_checkpoints(directory):
  """Steps 1 and 2 of a state whose bytes zstd stores as they are (random bits), so that a
  flipped byte in the data file changes a value instead of breaking the decompression."""
  ckpt = checkpointing.Checkpointer(directory, async_save=False)
  rng = np.random.default_rng(0)
  states = {}
  for step in (1, 2):
    states[step] = {'params': {'w': jnp.asarray(rng.integers(0, 2**32, (64, 64), np.uint32)),
                               'b': jnp.arange(8.0)}, 'step': jnp.int32(step)}
    ckpt.save(step, states[step])
  return ckpt, states


def _flip_a_byte_in_the_middle_of_the_largest_data_file(step_dir):
  data_file = max((step_dir / 'state').rglob('d/*'), key=lambda f: f.stat().st_size)
  content = bytearray(data_file.read_bytes())
  assert len(content) > 64 * 64 * 4  # the array's bytes are stored as they are
  content[len(content) // 2] ^= 0x01
  data_file.write_bytes(bytes(content))


def test_a_flipped_byte_in_a_checkpoint_is_reported_as_damage(tmp_path):
  ckpt, states = _incompressible_checkpoints(tmp_path)
  _flip_a_byte_in_the_middle_of_the_largest_data_file(tmp_path / '2')
  abstract = checkpointing.abstract_like(states[2])
  # Before: orbax restored it without a word, one weight changed.
  message = (r'/2: this checkpoint cannot be read; it looks damaged \(1 of its arrays read '
             r'back other values than were saved: params/w\)\. Move it .* uses step 1')
  with pytest.raises(UserInputError, match=message):
    ckpt.restore(abstract)
  with pytest.raises(UserInputError, match=message):
    ckpt.restore_part('params', abstract['params'])
  restored = ckpt.restore(abstract, step=1)  # the step before is intact and checked
  np.testing.assert_array_equal(restored['params']['w'], states[1]['params']['w'])
  ckpt.close()


def test_checkpoints_saved_without_fingerprints_still_restore(tmp_path):
  ckpt, states = _incompressible_checkpoints(tmp_path)
  shutil.rmtree(tmp_path / '2' / 'fingerprints')  # as written before fingerprints were kept
  restored = ckpt.restore(checkpointing.abstract_like(states[2]))
  np.testing.assert_array_equal(restored['params']['w'], states[2]['params']['w'])
  ckpt.close()


def test_an_array_restored_into_another_dtype_is_not_compared(tmp_path):
  ckpt, states = _incompressible_checkpoints(tmp_path)
  abstract = checkpointing.abstract_like(states[2]['params'])
  abstract['b'] = jax.ShapeDtypeStruct((8,), jnp.bfloat16)
  restored = ckpt.restore_part('params', abstract)
  assert restored['b'].dtype == jnp.bfloat16
  np.testing.assert_array_equal(restored['b'].astype(np.float32), np.arange(8.0))
  ckpt.close()


def test_an_unreadable_fingerprint_file_is_reported_as_damage(tmp_path):
  ckpt, states = _incompressible_checkpoints(tmp_path)
  record_file = tmp_path / '2' / 'fingerprints' / 'fingerprints.json'
  record = json.loads(record_file.read_text())
  assert set(record['arrays']) == {'params/w', 'params/b', 'step'}
  record_file.write_text(record_file.read_text()[:40])
  with pytest.raises(UserInputError, match=r'/2: .* damaged \(fingerprints/fingerprints\.json '
                     r'cannot be read: JSONDecodeError'):
    ckpt.restore(checkpointing.abstract_like(states[2]))
  ckpt.close()
