"""Seconds per Image GPT training step (generative objective) of this checkout, on one device.

  python bench/igpt_train_step.py --size tiny --image 16 --batch 64 --steps 12

Times `igpt_jax.train.make_train_step` (AdamW, clipping, the palette lookup on the device) on
one random batch, after 3 warm-up steps, and prints the step time and the last bits/dim (equal
bits/dim between two checkouts say they compute the same thing). To compare two commits, run
it from a worktree of each, alternately; CPU runs of the trainer set the glibc malloc options
of vision_core/host_memory.py, so time them under
`GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=-1`
as well.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n', maxsplit=1)[0])
  parser.add_argument('--size', default='tiny', help='igpt_jax.model.SIZES name')
  parser.add_argument('--image', type=int, default=16, help='image side: image^2 tokens')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=12, help='timed steps')
  args = parser.parse_args()

  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from igpt_jax import model as model_lib  # pylint: disable=g-import-not-at-top
  from igpt_jax import train  # pylint: disable=g-import-not-at-top

  tokens = args.image * args.image
  model = model_lib.ImageGPT(vocab_size=512, n_ctx=tokens, **model_lib.get_size(args.size))
  params = model_lib.init_params(model, jax.random.key(0), tokens)
  optimizer = train.make_optimizer(ml_collections.ConfigDict(dict(
      lr=3e-3, total_steps=2000, warmup_steps=100, grad_clip=1.0, b2=0.95, weight_decay=0.0)))
  state = dict(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))
  step = train.make_train_step(model=model, optimizer=optimizer, objective='generative')
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (args.batch, args.image, args.image, 3), np.uint8),
           'label': rng.integers(0, 10, args.batch).astype(np.int32)}
  centers = jnp.asarray(rng.uniform(-1, 1, (512, 3)).astype(np.float32))
  key = jax.random.key(1)
  for _ in range(3):
    state, metrics = step(state, batch, centers, key)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch, centers, key)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / args.steps
  print(f'{args.size} {args.batch}x{tokens} tokens: {seconds:.3f} s/step, '
        f'{args.batch / seconds:.1f} img/s, bits/dim {float(metrics["bits_per_dim"]):.5f} '
        f'(jax {jax.__version__}, {jax.devices()[0].platform})')


if __name__ == '__main__':
  main()
