"""BRISQUE throughput: ours (jit, batched) vs OpenCV's `cv2.quality.QualityBRISQUE`, one run.

  python bench/brisque_bench.py [--images 16] [--reps 3]

--images 512x512x3 uint8 images (skimage.data astronaut and coffee crops, rolled and flipped).
OpenCV: one `QualityBRISQUE.compute` per image (model loaded once; default build, IPP on).
Ours: `brisque_features` + SVR on the whole batch, and one image at a time. Timed alternately,
best of --reps, after a warm-up call (compile time printed separately). Needs the LIVE model
files (--data, default ../shared/data/brisque beside the project root).
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import cv2  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import skimage.data  # pylint: disable=g-import-not-at-top,wrong-import-position

from vit_jax.metrics import brisque_model  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.metrics.brisque import brisque  # pylint: disable=g-import-not-at-top,wrong-import-position

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '..', 'shared',
                    'data', 'brisque')


def make_images(n):
  bases = [skimage.data.astronaut(), skimage.data.coffee()[:, :512]]
  bases[1] = np.pad(bases[1], ((0, 112), (0, 0), (0, 0)), mode='reflect')
  out = []
  for i in range(n):
    image = np.roll(bases[i % 2], 41 * i, axis=1)
    out.append(image[:, ::-1] if i % 4 >= 2 else image)
  return np.ascontiguousarray(np.stack(out))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--images', type=int, default=16)
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--data', default=DATA,
                      help='folder with brisque_model_live.yml and brisque_range_live.yml')
  args = parser.parse_args()
  model_path = os.path.join(args.data, 'brisque_model_live.yml')
  range_path = os.path.join(args.data, 'brisque_range_live.yml')
  images = make_images(args.images)
  bgr = [np.ascontiguousarray(im[..., ::-1]) for im in images]
  svr = brisque_model.load_model(model_path, range_path)
  opencv = cv2.quality.QualityBRISQUE_create(model_path, range_path)

  t = time.perf_counter()
  ours = brisque(images, svr)
  compile_batch = time.perf_counter() - t
  t = time.perf_counter()
  brisque(images[:1], svr)
  compile_single = time.perf_counter() - t
  theirs = np.array([opencv.compute(b)[0] for b in bgr])

  best = {'opencv': np.inf, 'ours_batched': np.inf, 'ours_one_by_one': np.inf}
  for _ in range(args.reps):
    t = time.perf_counter()
    for b in bgr:
      opencv.compute(b)
    best['opencv'] = min(best['opencv'], time.perf_counter() - t)
    t = time.perf_counter()
    brisque(images, svr)
    best['ours_batched'] = min(best['ours_batched'], time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(len(images)):
      brisque(images[i:i + 1], svr)
    best['ours_one_by_one'] = min(best['ours_one_by_one'], time.perf_counter() - t)

  n = len(images)
  print(f'{n} images 512x512x3, best of {args.reps}; compile: batch {compile_batch:.1f} s, '
        f'single {compile_single:.1f} s')
  for name, seconds in best.items():
    print(f'  {name:16s} {n / seconds:7.1f} images/s   {1000 * seconds / n:6.1f} ms/image')
  print(f'  speed-up batched vs OpenCV: {best["opencv"] / best["ours_batched"]:.2f}x; '
        f'max |score difference| vs OpenCV (IPP build): {np.abs(ours - theirs).max():.2e}')


if __name__ == '__main__':
  main()
