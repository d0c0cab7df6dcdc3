"""SSIM throughput: ours (jit, one device and a 2-device CPU mesh) vs scikit-image, one run.

  python bench/ssim_bench.py [--pairs 16] [--reps 3]

16 pairs of 512x512x3 uint8 images (skimage.data astronaut and camera, shifted and flipped,
against JPEG-degraded and blurred copies). skimage: `structural_similarity(a, b,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
channel_axis=-1)` per pair. The three are timed alternately, best of --reps, after a warm-up
call (compile time is printed separately). The machine's cores are split into host devices
for the mesh run, so it must set XLA_FLAGS before jax is imported.
"""

import argparse
import io
import os
import sys
import time

os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count={os.cpu_count()}')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import scipy.ndimage  # pylint: disable=g-import-not-at-top,wrong-import-position
import skimage.data  # pylint: disable=g-import-not-at-top,wrong-import-position
import skimage.metrics  # pylint: disable=g-import-not-at-top,wrong-import-position
from PIL import Image  # pylint: disable=g-import-not-at-top,wrong-import-position

from vision_core import mesh as mesh_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position


def make_pairs(n):
  bases = [skimage.data.astronaut(), np.repeat(skimage.data.camera()[..., None], 3, axis=-1)]
  originals, degraded = [], []
  for i in range(n):
    image = np.roll(bases[i % 2], 37 * i, axis=1)
    image = image[:, ::-1] if i % 4 >= 2 else image
    if i % 2:
      buf = io.BytesIO()
      Image.fromarray(image).save(buf, format='JPEG', quality=20)
      other = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
    else:
      other = scipy.ndimage.gaussian_filter(image, (1.5, 1.5, 0))
    originals.append(image)
    degraded.append(other)
  return np.stack(originals), np.stack(degraded)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--pairs', type=int, default=16)
  parser.add_argument('--reps', type=int, default=3)
  args = parser.parse_args()
  a, b = make_pairs(args.pairs)
  mesh = mesh_lib.make_mesh((-1, 1))
  sa, sb = mesh_lib.shard_batch((a, b), mesh)
  da, db = jax.device_put(a, jax.devices()[0]), jax.device_put(b, jax.devices()[0])

  def skimage_all():
    return np.array([skimage.metrics.structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        channel_axis=-1) for x, y in zip(a, b)])

  runs = {
      'ours, 1 device': lambda: jax.block_until_ready(metrics.ssim(da, db)),
      f'ours, mesh of {mesh.shape["data"]} CPU devices':
          lambda: jax.block_until_ready(metrics.ssim(sa, sb)),
      'scikit-image': skimage_all,
  }
  for name, run in runs.items():
    if name.startswith('ours'):
      start = time.perf_counter()
      run()
      print(f'{name}: first call (compile + run) {time.perf_counter() - start:.2f} s')
  best = {name: float('inf') for name in runs}
  results = {}
  for _ in range(args.reps):
    for name, run in runs.items():
      start = time.perf_counter()
      results[name] = np.asarray(run())
      best[name] = min(best[name], time.perf_counter() - start)
  diff = np.abs(results['ours, 1 device'] - results['scikit-image']).max()
  print(f'{args.pairs} pairs of {a.shape[1]}x{a.shape[2]}x{a.shape[3]}, best of {args.reps}; '
        f'max |ours - skimage| = {diff:.2e}')
  base = best['scikit-image']
  for name, seconds in best.items():
    print(f'  {name:32s} {args.pairs / seconds:7.1f} images/s  ({base / seconds:.2f}x skimage)')


if __name__ == '__main__':
  main()
