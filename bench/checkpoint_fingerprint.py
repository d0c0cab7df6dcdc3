"""What the checkpoint fingerprints cost: a ViT train state saved and restored by plain orbax
and by our Checkpointer (orbax plus a fingerprint of every array at save and at restore), in
one run.

  python bench/checkpoint_fingerprint.py [--model ViT-B_16] [--reps 3] [--dir /tmp/ckpt_bench]

The state: the model's parameters (224 px, 1000 classes, float32) and AdamW's two moments,
as training saves it. Plain orbax: `ocp.StandardCheckpointer` save (waited for) and restore.
Ours: `Checkpointer(async_save=False)` save and restore, with and without (patched out) the
fingerprints. Also the fingerprints alone. Timed in
turn, --reps rounds after one warm-up round (which compiles the fingerprint programs); best
shown.
"""

import argparse
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import optax  # pylint: disable=g-import-not-at-top,wrong-import-position
import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top,wrong-import-position

from vision_core import checkpointing, fingerprint  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax import models_vit  # pylint: disable=g-import-not-at-top,wrong-import-position
from vit_jax.configs.models import MODEL_CONFIGS  # pylint: disable=g-import-not-at-top,wrong-import-position


def train_state(model_name):
  model = models_vit.VisionTransformer(num_classes=1000, **MODEL_CONFIGS[model_name])
  params = jax.jit(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)),
                                      train=False)['params'])()
  return {'params': params, 'opt_state': optax.adamw(1e-3).init(params), 'step': jnp.int32(0)}


def alternated_best(reps, fns):
  """Best seconds of each of `fns` ({name: fn}), timed in turn `reps` times after one
  warm-up round, so that all see the same page cache and disk state."""
  for fn in fns.values():
    fn()  # warm-up: compiles, fills caches
  best = {name: float('inf') for name in fns}
  for _ in range(reps):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      best[name] = min(best[name], time.perf_counter() - start)
  return best


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--model', default='ViT-B_16', choices=sorted(MODEL_CONFIGS))
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--dir', default='/tmp/ckpt_bench')
  args = parser.parse_args()
  if os.path.exists(args.dir):
    sys.exit(f'{args.dir} exists; give another --dir (this benchmark deletes its --dir).')

  state = train_state(args.model)
  leaves = jax.tree.leaves(state)
  gib = sum(x.nbytes for x in leaves) / 2**30
  abstract = checkpointing.abstract_like(state)
  print(f'{args.model} train state: {len(leaves)} arrays, {gib:.2f} GiB; '
        f'{jax.device_count()} {jax.devices()[0].platform} device(s)')

  count = iter(range(10**6))

  def plain_orbax():
    path = os.path.join(args.dir, f'plain_{next(count)}')
    with ocp.StandardCheckpointer() as ckpt:
      ckpt.save(path, state)
      ckpt.wait_until_finished()
      ckpt.restore(path, abstract)

  def ours():
    with checkpointing.Checkpointer(os.path.join(args.dir, f'ours_{next(count)}'),
                                    async_save=False) as ckpt:
      ckpt.save(1, state)
      ckpt.restore(abstract)

  def ours_without_fingerprints():
    # The same Checkpointer with the fingerprints taken out: what they alone add.
    real = fingerprint.fingerprints
    fingerprint.fingerprints = lambda tree: {}
    try:
      ours()
    finally:
      fingerprint.fingerprints = real

  try:
    first = time.perf_counter()
    fingerprint.fingerprints(state)
    compile_s = time.perf_counter() - first
    results = alternated_best(args.reps, {
        'plain orbax save + restore': plain_orbax,
        'ours (orbax + fingerprints) save + restore': ours,
        'ours, fingerprints taken out': ours_without_fingerprints,
        'fingerprints of the state alone': lambda: fingerprint.fingerprints(state)})
  finally:
    shutil.rmtree(args.dir, ignore_errors=True)
  print(f'first fingerprints call (compiles one program per array shape): {compile_s:.2f} s')
  for name, seconds in results.items():
    print(f'{name:45s} {seconds:7.2f} s  ({gib / seconds:5.2f} GiB/s)')
  plain, ours_s = results['plain orbax save + restore'], results[
      'ours (orbax + fingerprints) save + restore']
  print(f'ours / plain orbax: {ours_s / plain:.2f}x; ours / ours without fingerprints: '
        f'{ours_s / results["ours, fingerprints taken out"]:.2f}x')


if __name__ == '__main__':
  main()
