"""vision_core.fused_mlp's GPU kernels against XLA's ops, at ViT-B/16's MLP shapes.

  python bench/gpu_mlp_kernels.py --out rows.jsonl --best best_tiles.txt
  python bench/gpu_mlp_kernels.py --quick            # small shapes, interpreted: any backend
                                                      # (off a GPU, Triton's kernels only)

ViT-B/16 at batch 512 with 200 tokens: x [102400, 768], w1 [768, 3072], w2 [3072, 768],
bfloat16. Times, each the mean of 20 calls after 3 warm-ups, one JSON line each:
- forward: `pre = x @ w1 + b1; h = gelu(pre)`, both written (XLA: cuBLAS + a fusion);
  the forward kernel of each candidate (Triton's or Mosaic's, as below);
- backward: `dpre = (dy @ w2^T) * gelu'(pre)` and its column sums (the bias gradient);
  the backward kernel of each candidate: Triton's (`bm,bn,bk,warps,stages`, fused_mlp) or
  Mosaic GPU's (`mosaic:...`, fused_mlp_mosaic; see parse_tiles);
- the whole MLP's value and gradients (XLA autodiff against fused_mlp.mlp with the best
  of each kernel, XLA's forward included).
Each candidate's outputs are compared with XLA's (relative error, float32 norms); one over
2% is never the best. The best go to `--best` as `FORWARD/BACKWARD`, the form
bench/gpu_suite.py's `--mlp-tiles` takes (`xla` where XLA's forward was fastest).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.gpu_suite import time_loop  # pylint: disable=wrong-import-position

# Triton: session 13's two fastest. Mosaic: the default (M-minor bands of 8, JAX's Hopper
# matmul's fastest order at this shape; 3 stages; the backward prefetching `pre`), the
# fastest forward in session 19 (0.979 ms against XLA's 1.168); bands of 16; and 192-wide
# tiles per warpgroup with 2 stages (what fits in shared memory). Session 19 dropped 4 stages
# with the two-slot ring (backward 1.519 ms; the forward does not fit) and an N-minor
# order (1.021 and 1.414 ms).
CANDIDATES = ('128,128,64,8,3', '128,128,32,8,4', 'mosaic:128,128,64,3',
              'mosaic:128,128,64,3,64,1,16', 'mosaic:128,192,64,2')


def parse_tiles(text: str):
  """`'bm,bn,bk,warps,stages'` -> fused_mlp.Tiles; `'xla'` -> None (XLA's ops);
  `'mosaic:tile_m,tile_n,tile_k,stages[,epilogue,m_minor,band,prefetch]'` ->
  fused_mlp_mosaic.MosaicTiles."""
  from vision_core import fused_mlp  # pylint: disable=g-import-not-at-top
  if text == 'xla':
    return None
  if text.startswith('mosaic:'):
    from vision_core import fused_mlp_mosaic  # pylint: disable=g-import-not-at-top
    return fused_mlp_mosaic.MosaicTiles(*(int(v) for v in text[len('mosaic:'):].split(',')))
  return fused_mlp.Tiles(*(int(v) for v in text.split(',')))


def parse_tile_pair(text: str) -> tuple:
  """'FORWARD/BACKWARD' (what `--best` writes) -> `(forward, backward)`, each `parse_tiles`'."""
  return tuple(parse_tiles(t) for t in text.split('/'))


def _time(fn, *args) -> float:
  """Seconds per call: 20 calls after 3 warm-ups."""
  return time_loop(lambda: fn(*args), 3, 20, _block)


def _block(tree):
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(tree)


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--out', help='append one JSON line per result here')
  parser.add_argument('--best', help='write the fastest tiles here')
  parser.add_argument('--quick', action='store_true', help='small shapes, interpreted')
  parser.add_argument('--tiles', nargs='+', default=list(CANDIDATES))
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vision_core import fused_mlp  # pylint: disable=g-import-not-at-top

  m, d, f = (256, 64, 256) if args.quick else (102400, 768, 3072)
  if args.quick:
    args.tiles = ['64,128,32,4,3', 'mosaic:64,64,64,2']
  interpret = args.quick
  keys = jax.random.split(jax.random.key(0), 6)
  dtype = jnp.bfloat16
  x = jax.random.normal(keys[0], (m, d), dtype)
  w1 = (jax.random.normal(keys[1], (d, f)) / np.sqrt(d)).astype(dtype)
  b1 = (0.1 * jax.random.normal(keys[2], (f,))).astype(dtype)
  w2 = (jax.random.normal(keys[3], (f, d)) / np.sqrt(f)).astype(dtype)
  b2 = (0.1 * jax.random.normal(keys[4], (d,))).astype(dtype)
  dy = jax.random.normal(keys[5], (m, d), dtype)

  def emit(row):
    """Print `row` and append it to --out at once: a run killed by its timeout (a short
    device lease) keeps the rows it measured."""
    row = dict(row, shape=[m, d, f], backend=jax.default_backend())
    print(json.dumps(row), flush=True)
    if args.out:
      with open(args.out, 'a', encoding='utf-8') as fh:
        fh.write(json.dumps(row) + '\n')

  @jax.jit
  def xla_forward(x, w1, b1):
    pre = x @ w1 + b1
    return pre, jax.nn.gelu(pre, approximate=True)

  @jax.jit
  def xla_backward(dy, w2, pre):
    _, slope = fused_mlp.gelu_tanh_and_slope(pre.astype(jnp.float32))
    dpre = (dy @ w2.T).astype(jnp.float32) * slope
    return dpre.astype(dtype), jnp.sum(dpre, axis=0)

  ref_fwd = xla_forward(x, w1, b1)
  ref_bwd = xla_backward(dy, w2, ref_fwd[0])
  # XLA's forward is a candidate too: the best forward may be no kernel at all.
  best = {'forward': (1e3 * _time(xla_forward, x, w1, b1), 'xla')}
  emit({'kernel': 'forward', 'impl': 'xla', 'ms': best['forward'][0]})
  emit({'kernel': 'backward', 'impl': 'xla',
        'ms': 1e3 * _time(xla_backward, dy, w2, ref_fwd[0])})
  for text in args.tiles:
    tiles = parse_tiles(text)
    if text.startswith('mosaic:') and jax.default_backend() != 'gpu':
      # Off a GPU the Mosaic kernels would only give error rows (interpreted, their ordered
      # callbacks do not lower through fused_mlp's custom_partitioning under jit); their
      # values are checked on the CPU by tests/test_fused_mlp.py instead.
      print(f'gpu_mlp_kernels: {text} skipped: Mosaic GPU needs a GPU (backend '
            f'{jax.default_backend()})', file=sys.stderr, flush=True)
      continue
    fwd = jax.jit(lambda x, w1, b1, t=tiles: fused_mlp.dense_gelu(x, w1, b1, t, interpret))
    bwd = jax.jit(lambda dy, w2, pre, t=tiles: fused_mlp.gelu_input_grad(dy, w2, pre, t,
                                                                          interpret))
    kernels = [('forward', fwd, (x, w1, b1),
                lambda o: [_rel(o[0], ref_fwd[0]), _rel(o[1], ref_fwd[1])]),
               ('backward', bwd, (dy, w2, ref_fwd[0]),
                lambda o: [_rel(o[0], ref_bwd[0]), _rel(o[1], ref_bwd[1])])]
    for name, fn, fargs, check in kernels:
      row = {'kernel': name, 'tiles': text,
             'impl': 'pallas' if isinstance(tiles, fused_mlp.Tiles) else 'mosaic'}
      try:
        row['rel_err'] = check(fn(*fargs))
        row['ms'] = 1e3 * _time(fn, *fargs)
        if max(row['rel_err']) < 2e-2 and row['ms'] < best.get(name, (np.inf,))[0]:
          best[name] = (row['ms'], text)
      except Exception as e:  # pylint: disable=broad-except
        row['error'] = f'{type(e).__name__}: {e}'[-1500:]
      emit(row)
  if len(best) == 2:
    tiles = (parse_tiles(best['forward'][1]), parse_tiles(best['backward'][1]))

    def loss(mlp):
      return jax.jit(jax.value_and_grad(
          lambda *p: jnp.vdot(mlp(*p).astype(jnp.float32), dy.astype(jnp.float32)),
          argnums=(0, 1, 2, 3, 4)))
    plain = loss(lambda x, w1, b1, w2, b2: jax.nn.gelu(x @ w1 + b1, approximate=True) @ w2 + b2)
    fused = loss(lambda *p: fused_mlp.mlp(*p, *tiles, interpret))
    params = (x, w1, b1, w2, b2)
    errs = [_rel(a, b) for a, b in zip(jax.tree.leaves(fused(*params)),
                                       jax.tree.leaves(plain(*params)))]
    emit({'kernel': 'mlp value_and_grad', 'impl': 'xla', 'ms': 1e3 * _time(plain, *params)})
    emit({'kernel': 'mlp value_and_grad', 'impl': 'fused',
          'tiles': f"{best['forward'][1]}/{best['backward'][1]}", 'rel_err': errs,
          'ms': 1e3 * _time(fused, *params)})
    if args.best:
      with open(args.best, 'w', encoding='utf-8') as fh:
        fh.write(f"{best['forward'][1]}/{best['backward'][1]}\n")


if __name__ == '__main__':
  try:
    main()
  except Exception:  # pylint: disable=broad-except
    traceback.print_exc()
    sys.exit(1)
