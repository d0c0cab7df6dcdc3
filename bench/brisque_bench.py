"""BRISQUE throughput: ours (jit, batched) vs OpenCV's `cv2.quality.QualityBRISQUE`, one run.

  python bench/brisque_bench.py [--set photos|skimage] [--images 16] [--reps 3]

--set photos: --images 512x512x3 uint8 images (skimage.data astronaut and coffee crops, rolled
and flipped). --set skimage: every photo bundled with scikit-image (skimage.data, offline) at
least 256x256, centre-cropped to 256x256, grey ones as RGB.
OpenCV: one `QualityBRISQUE.compute` per image (model loaded once; default build, IPP on; it
uses cv2.getNumThreads() threads). Ours: `brisque(images, model)` on the whole batch (one image
at a time, XLA using every core), the same with two images at once (threads=2), and one call
per image. Timed alternately, best of --reps, after a warm-up call (its time, with compilation,
printed separately). Also prints the largest score difference against OpenCV with IPP off (the
path we reproduce) and on. Needs the LIVE model files (--data, default ../shared/data/brisque
beside the project root).
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


# Bundled with scikit-image (no download); 'logo' is RGBA, several are grey.
SKIMAGE = ('astronaut', 'brick', 'camera', 'cell', 'chelsea', 'clock', 'coffee', 'coins',
           'colorwheel', 'grass', 'gravel', 'horse', 'hubble_deep_field',
           'immunohistochemistry', 'logo', 'moon', 'retina', 'rocket')


def skimage_images(side=256):
  out = []
  for name in SKIMAGE:
    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype == bool:
      image = image.astype(np.uint8) * 255
    if image.ndim == 2:
      image = np.repeat(image[..., None], 3, axis=2)
    h, w = image.shape[:2]
    if min(h, w) >= side:
      top, left = (h - side) // 2, (w - side) // 2
      out.append(image[top:top + side, left:left + side, :3])
  return np.ascontiguousarray(np.stack(out))


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--set', choices=('photos', 'skimage'), default='photos')
  parser.add_argument('--images', type=int, default=16, help='batch size for --set photos')
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--data', default=DATA,
                      help='folder with brisque_model_live.yml and brisque_range_live.yml')
  args = parser.parse_args()
  model_path = os.path.join(args.data, 'brisque_model_live.yml')
  range_path = os.path.join(args.data, 'brisque_range_live.yml')
  images = make_images(args.images) if args.set == 'photos' else skimage_images()
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
  ipp = cv2.ipp.useIPP()
  cv2.ipp.setUseIPP(False)  # OpenCV's portable path, the one we reproduce bit for bit.
  portable = np.array([cv2.quality.QualityBRISQUE_create(model_path, range_path).compute(b)[0]
                       for b in bgr])
  cv2.ipp.setUseIPP(ipp)

  best = {'opencv': np.inf, 'ours_batched': np.inf, 'ours_batched_2thr': np.inf,
          'ours_one_by_one': np.inf}
  for _ in range(args.reps):
    t = time.perf_counter()
    for b in bgr:
      opencv.compute(b)
    best['opencv'] = min(best['opencv'], time.perf_counter() - t)
    t = time.perf_counter()
    brisque(images, svr)
    best['ours_batched'] = min(best['ours_batched'], time.perf_counter() - t)
    t = time.perf_counter()
    brisque(images, svr, threads=2)
    best['ours_batched_2thr'] = min(best['ours_batched_2thr'], time.perf_counter() - t)
    t = time.perf_counter()
    for i in range(len(images)):
      brisque(images[i:i + 1], svr)
    best['ours_one_by_one'] = min(best['ours_one_by_one'], time.perf_counter() - t)

  n = len(images)
  h, w, c = images.shape[1:]
  print(f'{n} images {h}x{w}x{c} ({args.set}), best of {args.reps}, OpenCV on '
        f'{cv2.getNumThreads()} threads; first call (compiles): batch {compile_batch:.1f} s, '
        f'single {compile_single:.1f} s')
  for name, seconds in best.items():
    print(f'  {name:16s} {n / seconds:7.1f} images/s   {1000 * seconds / n:6.1f} ms/image')
  print(f'  speed-up batched vs OpenCV: {best["opencv"] / best["ours_batched"]:.2f}x; '
        f'max |score difference| vs OpenCV: {np.abs(ours - portable).max():.2e} (IPP off), '
        f'{np.abs(ours - theirs).max():.2e} (IPP on, as timed)')


if __name__ == '__main__':
  main()
