"""CRC-32C throughput: ours (numpy lanes) vs the byte-at-a-time loop vs peers, one run.

  python bench/crc32c_bench.py [--mib 64] [--reps 3]

Why it matters: every tensor of an OpenAI TF checkpoint is checked against its CRC-32C on
load (`igpt_jax.tf_bundle`, as TensorFlow does); igpt-l is ~5.6 GiB of float32. Timed on
--mib MiB of random bytes, best of --reps: ours, `vision_core.crc32c.crc32c_numpy` (numpy for
inputs of 64 KiB or more), the byte loop it keeps for short inputs (on 4 MiB, scaled),
TensorBoard's pure-Python CRC-32C (its TensorFlow stand-in), google-crc32c (C; Google's
package, used by the GCS clients) called directly, and `vision_core.crc32c.crc32c`, what the
loaders call (google-crc32c where its C extension is installed, else ours). Every result is
checked against the others.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vision_core import crc32c  # pylint: disable=g-import-not-at-top,wrong-import-position


def byte_loop(data: bytes) -> int:
  """The table loop `crc32c` keeps for inputs shorter than a row."""
  crc = 0xFFFFFFFF
  table = crc32c._TABLE  # pylint: disable=protected-access
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def best_of(fn, data, reps):
  times, value = [], None
  for _ in range(reps):
    start = time.perf_counter()
    value = fn(data)
    times.append(time.perf_counter() - start)
  return min(times), value & 0xFFFFFFFF


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--mib', type=int, default=64, help='input size for the fast ones')
  parser.add_argument('--reps', type=int, default=3)
  args = parser.parse_args()
  big = os.urandom(args.mib << 20)
  small = big[:4 << 20]  # the pure-Python loops take seconds per MiB
  crc32c.crc32c_numpy(big[:1 << 20])  # builds the lookup tables once (cached), not timed below
  rows = [('ours (numpy lanes)', crc32c.crc32c_numpy, big)]
  rows.append(('byte loop (ours, < 64 KiB)', byte_loop, small))
  try:
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow  # pylint: disable=g-import-not-at-top
    rows.append(('tensorboard pure Python', pywrap_tensorflow.crc32c, small))
  except ImportError:
    print('tensorboard not installed: its row is left out')
  try:
    import google_crc32c  # pylint: disable=g-import-not-at-top
    rows.append((f'google-crc32c ({google_crc32c.implementation})', google_crc32c.value, big))
  except ImportError:
    print('google-crc32c not installed (pip install google-crc32c): its row is left out')
  rows.append(('crc32c.crc32c (the loaders)', crc32c.crc32c, big))
  expected = {len(big): crc32c.crc32c_numpy(big), len(small): crc32c.crc32c_numpy(small)}
  print(f'{"implementation":<30} {"MiB":>5} {"seconds":>9} {"s per GiB":>10}')
  for name, fn, data in rows:
    seconds, value = best_of(fn, data, args.reps)
    assert value == expected[len(data)], f'{name}: {value:08x} != {expected[len(data)]:08x}'
    mib = len(data) / (1 << 20)
    print(f'{name:<30} {mib:>5.0f} {seconds:>9.3f} {seconds * 1024 / mib:>10.1f}')


if __name__ == '__main__':
  main()
