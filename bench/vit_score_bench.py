"""ViT-Score throughput (image pairs/s) for ViT-B/16 at 224x224 on this machine.

  python bench/vit_score_bench.py [--pairs 16] [--batch 8]

Random weights (the throughput does not depend on them; no checkpoint is downloaded), 1000
classes, k=100. One jitted pass per batch computes the top-k overlap, the weighted overlap and
the pre-logit cosine (2 x batch images through the ViT). Best of --reps after a warm-up call.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

from vit_jax import models_vit  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.configs.models import get_model_config  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.metrics.vit_score import vit_scores  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--pairs', type=int, default=16)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--reps', type=int, default=2)
  args = parser.parse_args()
  model = models_vit.VisionTransformer(num_classes=1000, **get_model_config('ViT-B_16'))
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3)))['params']
  params = dict(params)
  params['head'] = {'kernel': jax.random.normal(jax.random.PRNGKey(1), (768, 1000)) * 0.02,
                    'bias': jnp.zeros(1000)}
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (args.pairs, 224, 224, 3), dtype=np.uint8)
  b = np.clip(a.astype(np.int16) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
  t = time.perf_counter()
  vit_scores(a[:args.batch], b[:args.batch], model, params, k=100, batch_size=args.batch)
  warm = time.perf_counter() - t
  best = np.inf
  for _ in range(args.reps):
    t = time.perf_counter()
    vit_scores(a, b, model, params, k=100, batch_size=args.batch)
    best = min(best, time.perf_counter() - t)
  print(f'ViT-B/16 224x224, {args.pairs} pairs in batches of {args.batch}, '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s); warm-up {warm:.1f} s')
  print(f'  {args.pairs / best:.2f} pairs/s ({1000 * best / args.pairs:.0f} ms/pair, '
        f'{2 * args.pairs / best:.2f} images/s)')


if __name__ == '__main__':
  main()
