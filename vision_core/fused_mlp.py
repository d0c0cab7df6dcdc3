"""A transformer MLP, `gelu(x @ w1 + b1) @ w2 + b2`, with its elementwise work inside the
matmuls: Pallas (Triton) kernels for GPUs.

Why: in a ViT-B/16 train step on an H100 the matmuls run at ~96% of the measured matmul
peak, but the bias + GELU pass after the first matmul and the GELU-backward + bias-gradient
pass after the input-gradient matmul are separate memory-bound kernels (7.1 and 9.9 ms of a
136 ms step, docs/benchmarks.md). Here

- forward: one kernel computes `pre = x @ w1 + b1` and writes `pre` and `h = gelu(pre)`
  (the two arrays autodiff keeps anyway), with no separate pass over `[M, F]`;
- backward: one kernel computes `dpre = (dy @ w2^T) * gelu'(pre)` and each row block's
  partial sum of `dpre` (the bias gradient), so `dh` is never written.

The other matmuls (`h @ w2`, the weight gradients, `dpre @ w1^T`) stay XLA's (cuBLAS).
Only the tanh GELU (flax's `nn.gelu` default, the official ViT's) is implemented.
`interpret=True` runs the same kernels through Pallas' interpreter on any backend (the tests
do that on the CPU).

Measured on an H100 (session 13): no faster. Triton's matmul runs at ~400 TFLOP/s there
against cuBLAS's 757, which costs what the fusion saves. `mlp` also takes
fused_mlp_mosaic's Mosaic GPU kernels (wgmma, TMA) for either pass.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from vision_core import pallas_sharding

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_CUBIC = 0.044715


@dataclasses.dataclass(frozen=True)
class Tiles:
  """The kernels' tile shape and Triton settings (`num_warps`, software-pipeline depth)."""
  block_m: int = 128
  block_n: int = 128
  block_k: int = 64
  num_warps: int = 8
  num_stages: int = 3


def gelu_tanh_and_slope(x):
  """`(gelu(x), gelu'(x))` of the tanh GELU, float32 in and out."""
  inner = _SQRT_2_OVER_PI * (x + _CUBIC * x * x * x)
  t = jnp.tanh(inner)
  value = 0.5 * x * (1.0 + t)
  slope = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * _SQRT_2_OVER_PI * (
      1.0 + 3.0 * _CUBIC * x * x)
  return value, slope


def _accumulate(a_ref, b_ref, block_k):
  """`a_ref [bm, K] @ b_ref [K, bn]` in float32, `block_k` columns of `a` at a time."""
  def body(i, acc):
    start = pl.multiple_of(i * block_k, block_k)
    return acc + jnp.dot(a_ref[:, pl.ds(start, block_k)], b_ref[pl.ds(start, block_k), :],
                         preferred_element_type=jnp.float32)
  shape = (a_ref.shape[0], b_ref.shape[1])
  return jax.lax.fori_loop(0, a_ref.shape[1] // block_k, body,
                           jnp.zeros(shape, jnp.float32))


def _forward_kernel(x_ref, w_ref, b_ref, pre_ref, h_ref, *, block_k):
  pre = _accumulate(x_ref, w_ref, block_k) + b_ref[...].astype(jnp.float32)[None, :]
  pre = pre.astype(pre_ref.dtype)  # the stored pre-activation; h is computed from it
  h, _ = gelu_tanh_and_slope(pre.astype(jnp.float32))
  pre_ref[...] = pre
  h_ref[...] = h.astype(h_ref.dtype)


def _backward_kernel(dy_ref, w2t_ref, pre_ref, dpre_ref, dbias_ref, *, block_k):
  dh = _accumulate(dy_ref, w2t_ref, block_k)
  _, slope = gelu_tanh_and_slope(pre_ref[...].astype(jnp.float32))
  dpre = dh * slope
  dpre_ref[...] = dpre.astype(dpre_ref.dtype)
  dbias_ref[...] = jnp.sum(dpre, axis=0)


def _tiled_call(kernel, a, b, row_inputs, col_inputs, out_dtypes, extra_out, tiles,
                interpret):
  """Runs `kernel` over the `[M, N]` output tiles of `a [M, K] @ b [K, N]`.

  `row_inputs`: `[M, N]` arrays read tile by tile; `col_inputs`: `[N]` vectors; outputs:
  one `[M, N]` array per `out_dtypes`, plus (`extra_out`) a float32 `[M // block_m, N]` of
  per-row-block results. A 1-D grid with the column index fastest: the programs running
  together share one row block of `a`, read once from memory.
  """
  m, k = a.shape
  n = b.shape[1]
  bm, bn = tiles.block_m, tiles.block_n
  cols = n // bn
  tile = pl.BlockSpec((bm, bn), lambda p: (p // cols, p % cols))
  in_specs = ([pl.BlockSpec((bm, k), lambda p: (p // cols, 0)),
               pl.BlockSpec((k, bn), lambda p: (0, p % cols))]
              + [tile] * len(row_inputs)
              + [pl.BlockSpec((bn,), lambda p: (p % cols,))] * len(col_inputs))
  out_specs = [tile] * len(out_dtypes)
  out_shape = [jax.ShapeDtypeStruct((m, n), d) for d in out_dtypes]
  if extra_out:
    out_specs.append(pl.BlockSpec((None, bn), lambda p: (p // cols, p % cols)))
    out_shape.append(jax.ShapeDtypeStruct((m // bm, n), jnp.float32))
  params = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
    params['compiler_params'] = plgpu.CompilerParams(num_warps=tiles.num_warps,
                                                     num_stages=tiles.num_stages)
  return pl.pallas_call(
      functools.partial(kernel, block_k=tiles.block_k), grid=((m // bm) * cols,),
      in_specs=in_specs, out_specs=out_specs, out_shape=out_shape, interpret=interpret,
      # 'mlp_gemm_forward' etc.: profiles class it as a gemm, bench/gpu_aot_check.py finds it.
      name='mlp_gemm_' + kernel.__name__.strip('_').removesuffix('_kernel'),
      **params)(a, b, *row_inputs, *col_inputs)


def _mosaic():
  """fused_mlp_mosaic, imported here because it imports this module."""
  from vision_core import fused_mlp_mosaic  # pylint: disable=g-import-not-at-top
  return fused_mlp_mosaic


def fits(d: int, f: int, tiles) -> bool:
  """Whether `[M, d] -> [M, f] -> [M, d]` tiles evenly (rows are padded, the rest must).
  `tiles`: Tiles, None (XLA's ops) or fused_mlp_mosaic.MosaicTiles."""
  if tiles is None:
    return True
  if not isinstance(tiles, Tiles):
    return _mosaic().fits(d, f, tiles)
  return f % tiles.block_n == 0 and d % tiles.block_k == 0 and f >= tiles.block_n


def pad_rows(x, multiple):
  """`x [M, ...]` with zero rows appended up to a multiple of `multiple` (the kernels' row
  blocks)."""
  pad = -x.shape[0] % multiple
  return jnp.pad(x, ((0, pad),) + ((0, 0),) * (x.ndim - 1)) if pad else x


def dense_gelu(x, w1, b1, tiles, interpret: bool = False):
  """The forward kernel: `x [M, D]`, `w1 [D, F]`, `b1 [F]` -> `(pre, gelu(pre))`, each
  `[M, F]` in `x`'s dtype. `tiles`: Tiles (Triton) or fused_mlp_mosaic.MosaicTiles. On a
  mesh each device runs it on its rows (vision_core.pallas_sharding)."""
  def run(x, w1, b1):
    if not isinstance(tiles, Tiles):
      return _mosaic().dense_gelu(x, w1, b1, tiles, interpret=interpret)
    m = x.shape[0]
    pre, h = _tiled_call(_forward_kernel, pad_rows(x, tiles.block_m), w1, [], [b1],
                         [x.dtype, x.dtype], False, tiles, interpret)
    return pre[:m], h[:m]
  return pallas_sharding.sharded(run, ['b.', '..', '.'], ['b.', 'b.'])(x, w1, b1)


def gelu_input_grad(dy, w2, pre, tiles, interpret: bool = False):
  """The backward kernel: `dy [M, D]`, `w2 [F, D]`, `pre [M, F]` ->
  `(dpre = (dy @ w2^T) * gelu'(pre) [M, F], its float32 column sums [F])`. `tiles`: Tiles
  (Triton) or fused_mlp_mosaic.MosaicTiles. On a mesh each device runs it on its rows, and
  the column sums are summed over the devices."""
  def run(dy, w2, pre):
    if not isinstance(tiles, Tiles):
      return _mosaic().gelu_input_grad(dy, w2, pre, tiles, interpret=interpret)
    m = dy.shape[0]
    dpre, partial_sums = _tiled_call(
        _backward_kernel, pad_rows(dy, tiles.block_m), w2.T,
        [pad_rows(pre, tiles.block_m)], [], [dy.dtype], True, tiles, interpret)
    # Padded rows have dy = 0, so they add nothing to the sums.
    return dpre[:m], jnp.sum(partial_sums, axis=0)
  return pallas_sharding.sharded(run, ['b.', '..', 'b.'], ['b.', '.'], summed=(1,))(
      dy, w2, pre)


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def mlp(x, w1, b1, w2, b2, tiles: Tiles | None = Tiles(), backward_tiles: Tiles = Tiles(),
        interpret: bool = False):
  """`gelu(x @ w1 + b1) @ w2 + b2` (tanh GELU): `x [M, D]`, `w1 [D, F]`, `b1 [F]`,
  `w2 [F, D]`, `b2 [D]` (or None: no second bias) -> `[M, D]`, all of one dtype (bfloat16
  on GPUs). `tiles` is the
  forward kernel's (None: XLA's ops instead), `backward_tiles` the backward's (either a
  fused_mlp_mosaic.MosaicTiles: that module's kernel); each needs `fits(D, F, ...)`."""
  return _mlp_fwd(x, w1, b1, w2, b2, tiles, backward_tiles, interpret)[0]


def _mlp_fwd(x, w1, b1, w2, b2, tiles, backward_tiles, interpret):
  del backward_tiles
  if tiles is None:  # XLA's matmul, then its bias + GELU pass
    pre = jnp.dot(x, w1) + b1
    h = jax.nn.gelu(pre, approximate=True)
  else:
    pre, h = dense_gelu(x, w1, b1, tiles, interpret)
  y = jnp.dot(h, w2)
  return (y if b2 is None else y + b2), (x, w1, w2, pre, h, b2)


def _mlp_bwd(forward_tiles, tiles, interpret, residuals, dy):
  del forward_tiles
  x, w1, w2, pre, h, b2 = residuals  # b2: [D] or None, for its dtype
  dpre, db1 = gelu_input_grad(dy, w2, pre, tiles, interpret)
  dw1 = jnp.dot(x.T, dpre)
  dx = jnp.dot(dpre, w1.T)
  dw2 = jnp.dot(h.T, dy)
  db2 = None if b2 is None else jnp.sum(dy.astype(jnp.float32), axis=0).astype(b2.dtype)
  return dx, dw1, db1.astype(w1.dtype), dw2, db2


mlp.defvjp(_mlp_fwd, _mlp_bwd)
