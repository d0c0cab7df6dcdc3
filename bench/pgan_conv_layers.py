"""Where the CPU latent search's time goes: each PGAN layer's forward + input gradient,
ours (XLA:CPU) beside PyTorch (oneDNN), and two other ways of writing a 3x3 convolution.

    python bench/pgan_conv_layers.py [--batch 32] [--reps 30]

The layers are those of bench/gan_latent_search.py's generator (depths 128, 128, 64, 32;
4 -> 32 px). A latent search needs the input gradient of every layer, never the weight
gradient, so each row times `y = f(x); dx = vjp(y)` (the cotangent is y itself). Ours: the
convolutions `gan_jax.models_pgan` runs (`upscale2d_conv3x3` for a scale's first layer,
which folds the x2 upsample in; `lax.conv_general_dilated` otherwise), jitted. PyTorch:
the study's formulation (nearest x2 `interpolate`, then `conv2d`), eager, 2 threads.
The 3x3 layers are also timed as:
- im2col: the 9 shifted copies concatenated, one matmul with K = 9 C;
- rows: 3 matmuls, one per kernel row, over the 3 column shifts concatenated (K = 3 C);
each with a custom VJP that computes the input gradient the same way on the flipped,
transposed kernel.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gan_jax.models_pgan import upscale2d_conv3x3  # pylint: disable=wrong-import-position

# (name, input side, in channels, out channels, kind): kind 'up' = nearest x2 then 3x3.
LAYERS = [('groupScale0 3x3, 4x4', 4, 128, 128, '3x3'),
          ('scale 1 up + 3x3, 4 -> 8', 4, 128, 128, 'up'),
          ('scale 1 3x3, 8x8', 8, 128, 128, '3x3'),
          ('scale 2 up + 3x3, 8 -> 16', 8, 128, 64, 'up'),
          ('scale 2 3x3, 16x16', 16, 64, 64, '3x3'),
          ('scale 3 up + 3x3, 16 -> 32', 16, 64, 32, 'up'),
          ('scale 3 3x3, 32x32', 32, 32, 32, '3x3'),
          ('toRGB 1x1, 32x32', 32, 32, 3, '1x1')]


def conv_same(x, w):
  """`[B, H, W, C]` * `[k, k, C, O]` -> `[B, H, W, O]`, stride 1, same padding."""
  return jax.lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def shifted(x, k):
  """The k x k shifted views of the zero-padded `x [B, H, W, C]`, row-major."""
  h, w, p = x.shape[1], x.shape[2], k // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  return [[xp[:, i:i + h, j:j + w] for j in range(k)] for i in range(k)]


def im2col_conv(x, w):
  k = w.shape[0]
  cols = jnp.concatenate([v for row in shifted(x, k) for v in row], -1)
  return jnp.einsum('bhwc,co->bhwo', cols, w.reshape(-1, w.shape[-1]))


def rows_conv(x, w):
  k = w.shape[0]
  out = 0
  for i, row in enumerate(shifted(x, k)):
    out = out + jnp.einsum('bhwc,co->bhwo', jnp.concatenate(row, -1),
                           w[i].reshape(-1, w.shape[-1]))
  return out


def with_same_form_vjp(conv):
  """`conv` whose input gradient is `conv` of the cotangent with the flipped kernel."""
  @jax.custom_vjp
  def f(x, w):
    return conv(x, w)

  def fwd(x, w):
    return conv(x, w), w

  def bwd(w, dy):
    return conv(dy, jnp.flip(w, (0, 1)).transpose(0, 1, 3, 2)), jnp.zeros_like(w)
  f.defvjp(fwd, bwd)
  return f


def ms_per_call(fn, reps):
  fn()
  fn()
  start = time.perf_counter()
  for _ in range(reps):
    fn()
  return (time.perf_counter() - start) / reps * 1e3


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--reps', type=int, default=30)
  args = parser.parse_args()
  torch.set_num_threads(2)
  variants = {'ours': None, 'im2col': with_same_form_vjp(im2col_conv),
              'rows': with_same_form_vjp(rows_conv)}
  print(f'batch {args.batch}; jax {jax.__version__}, torch {torch.__version__}; '
        'forward + input gradient, ms per call\n')
  print('| layer | ours | PyTorch eager | ours / PyTorch time | im2col | rows |')
  print('|---|---|---|---|---|---|')
  totals = [0.0, 0.0]
  for name, side, cin, cout, kind in LAYERS:
    rng = np.random.default_rng(0)
    k = 1 if kind == '1x1' else 3
    x = rng.standard_normal((args.batch, side, side, cin)).astype(np.float32)
    w = (rng.standard_normal((k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
    jx, jw = jnp.asarray(x), jnp.asarray(w)
    times = {}
    for label, conv in variants.items():
      if conv is None:
        conv = upscale2d_conv3x3 if kind == 'up' else conv_same
      elif kind != '3x3':
        continue

      def fwd_dx(x, w, conv=conv):
        y, vjp = jax.vjp(lambda x: conv(x, w), x)
        return vjp(y)[0]
      step = jax.jit(fwd_dx)
      times[label] = ms_per_call(lambda: step(jx, jw).block_until_ready(), args.reps)
    tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).requires_grad_(True)
    tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())

    def torch_fwd_dx():
      xi = torch.nn.functional.interpolate(tx, scale_factor=2, mode='nearest') \
          if kind == 'up' else tx
      y = torch.nn.functional.conv2d(xi, tw, padding=k // 2)
      return torch.autograd.grad(y, tx, y)[0]
    times['torch'] = ms_per_call(torch_fwd_dx, args.reps)
    totals[0] += times['ours']
    totals[1] += times['torch']
    extra = ' | '.join(f'{times[v]:.2f}' if v in times else '-' for v in ('im2col', 'rows'))
    print(f'| {name} | {times["ours"]:.2f} | {times["torch"]:.2f} | '
          f'{times["ours"] / times["torch"]:.2f} | {extra} |', flush=True)
  print(f'| all layers | {totals[0]:.1f} | {totals[1]:.1f} | {totals[0] / totals[1]:.2f} | | |')


if __name__ == '__main__':
  main()
