"""Test bits/dim of an Image GPT run's exported weights, as its trainer evaluates them.

  python bench/igpt_bits_per_dim.py --workdir runs/igpt_probe --dataset ../shared/data/cifar10 \
      --image_size 16 --examples 2000 0

Loads `WORKDIR/params.npz` and `WORKDIR/palette.npy` and runs `igpt_jax.train.evaluate`
(next-token bits per RGB dimension, the trainer's fixed random subset of `--examples` test
images; 0 for the whole split) once per value of `--examples`, printing one JSON line each.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--workdir', required=True, help='an igpt_jax.main run (params.npz)')
  parser.add_argument('--dataset', required=True, help='image folder or TFDS name')
  parser.add_argument('--image_size', type=int, required=True)
  parser.add_argument('--examples', type=int, nargs='+', default=[2000],
                      help='evaluation subset sizes (0: the whole test split)')
  parser.add_argument('--batch', type=int, default=64)
  args = parser.parse_args()

  import ml_collections  # pylint: disable=g-import-not-at-top
  from igpt_jax import checkpoint, palette, train  # pylint: disable=g-import-not-at-top
  from vision_core import data, mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  params, model = checkpoint.load(os.path.join(args.workdir, 'params.npz'))
  centers = palette.load_palette(os.path.join(args.workdir, 'palette.npy'))
  mesh = mesh_lib.make_mesh()
  step = train.make_eval_step(model=model, objective='generative')
  source = data.get_source(args.dataset, 'test')
  for n in args.examples:
    config = ml_collections.ConfigDict(dict(image_size=args.image_size, batch_size=args.batch,
                                            eval_examples=n))
    start = time.time()
    result = train.evaluate(step, params, centers, source, config, mesh)
    print(json.dumps({'examples': n or len(source), **result,
                      'seconds': round(time.time() - start, 1)}), flush=True)


if __name__ == '__main__':
  main()
