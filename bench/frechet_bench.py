"""Frechet distance on 2048-d features: ours (float64 symmetric eigendecompositions) vs the
scipy `sqrtm` formulation of pytorch-fid / TTUR, one run.

  python bench/frechet_bench.py [--dim 2048] [--n 6000]

Features are correlated and skewed (gamma variables mixed by a random matrix); the
covariances are computed once (not timed). Full rank: --n samples per set (> dim). Rank-
deficient: dim // 2 samples per set (our eigh fallback). Also times the study's per-image FID
on raw pixel rows of a 512x512x3 image (512 samples of 1536 values: rank-deficient), ours
(exact nuclear-norm route on the rows) vs scipy sqrtm on the covariances.
"""

import argparse
import warnings
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
import scipy.linalg  # pylint: disable=g-import-not-at-top,wrong-import-position
import skimage.data  # pylint: disable=g-import-not-at-top,wrong-import-position

from vit_jax import metrics  # pylint: disable=g-import-not-at-top,wrong-import-position


def scipy_frechet(mu1, s1, mu2, s2):
  covmean = scipy.linalg.sqrtm(s1 @ s2)
  covmean = np.real(covmean)
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


def timed(fn, *args):
  start = time.perf_counter()
  value = fn(*args)
  return value, time.perf_counter() - start


def main():
  warnings.simplefilter('ignore')  # scipy's singular-matrix warnings in the rank-deficient rows
  parser = argparse.ArgumentParser()
  parser.add_argument('--dim', type=int, default=2048)
  parser.add_argument('--n', type=int, default=6000)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  mix = rng.normal(size=(args.dim, args.dim)) / np.sqrt(args.dim)
  for label, n in (('full rank', args.n), ('rank-deficient', args.dim // 2)):
    stats = []
    for shape in (2.0, 2.3):
      x = rng.gamma(shape, size=(n, args.dim)) @ mix
      stats += [x.mean(0), np.cov(x, rowvar=False)]
    ours, t_ours = timed(metrics.frechet_distance, *stats)
    ref, t_ref = timed(scipy_frechet, *stats)
    print(f'{args.dim}-d covariances from {n} samples each ({label}):')
    print(f'  ours           {t_ours:8.2f} s   FID {ours:.10g}')
    print(f'  scipy sqrtm    {t_ref:8.2f} s   FID {ref:.10g}   ({t_ref / t_ours:.1f}x slower; '
          f'relative difference {abs(ours - ref) / abs(ref):.1e})')

  image = skimage.data.astronaut()
  blurred = (image // 16 * 16).astype(np.uint8)
  rows_a = image.reshape(512, -1).astype(np.float64)
  rows_b = blurred.reshape(512, -1).astype(np.float64)
  ours, t_ours = timed(lambda: float(metrics.pixel_row_fid(image[None], blurred[None])[0]))
  ref, t_ref = timed(scipy_frechet, rows_a.mean(0), np.cov(rows_a, rowvar=False),
                     rows_b.mean(0), np.cov(rows_b, rowvar=False))
  print('pixel-row FID of one 512x512x3 pair (512 samples of 1536 values, rank-deficient):')
  print(f'  ours (rows)    {t_ours:8.2f} s   FID {ours:.10g}')
  print(f'  scipy sqrtm    {t_ref:8.2f} s   FID {ref:.10g}   ({t_ref / t_ours:.1f}x slower)')


if __name__ == '__main__':
  main()
