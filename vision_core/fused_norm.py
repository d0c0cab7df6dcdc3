"""A pre-norm transformer's residual add and the next LayerNorm's normalisation in one pass
over memory, forward and backward: Pallas (Triton) kernels for GPUs.

`add_normalize(x, y, bias)` is `s = x + (y + bias)` (the new residual stream; `bias` is
the last matmul's, so that no pass of its own adds it) and `normalize(s)` (the LayerNorm
without its scale and bias, which the models fold into the next matmul). XLA runs it as
several memory-bound passes over `[B, N, D]` (the adds, the row statistics, the normalised
output), and the backward as several more (the statistics of the gradient, the gradient,
its sum with the residual's, the bias gradient). Compiled for an H100, the ViT-B/16
training step (batch 512, with our other kernels) has 54.0 GB of XLA's memory passes;
with these kernels 9.5 GB, and the kernels move 29 GB themselves
(bench/gpu_aot_check.py's memory_passes_gb). Measured on an H200: 3.0 ms less per step
alone, 114.2 ms with the flash attention and the matmul patch embedding (docs/benchmarks.md).
Here:

- forward: one kernel reads `x`, `y` and `bias` and writes `s`, `normalize(s)` and each
  row's mean and reciprocal standard deviation (`[M]` float32, for the backward);
- backward: one kernel reads the cotangents of `s` and of the normalised output, and `s`,
  and writes the cotangent of `x` (which is also `y`'s): the LayerNorm's input gradient
  plus the residual's, in one pass; and each program's column sums of it, which XLA adds
  up into the bias gradient (`[M / rows, D]`, a small fraction of a pass).

`y=None` is the LayerNorm alone (`s` is `x`). The statistics are `normalize`'s (float32,
variance as E[s^2] - E[s]^2 clipped at 0), so `impl='xla'` and the kernels compute the same
function. Each program takes `NormTiles.rows` whole rows; a row is read in chunks of up to
256 columns (Triton needs power-of-two blocks; 768 = 3 x 256), twice: once for the
statistics and once for the output, the second read served by the cache.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from vision_core import gpu_target, pallas_sharding
from vision_core.fused_mlp import pad_rows

IMPLS = ('xla', 'pallas', 'pallas_interpret')
EPS = 1e-6  # nn.LayerNorm's default; every LayerNorm of the ViT (models_vit) uses it


@dataclasses.dataclass(frozen=True)
class NormTiles:
  """Rows per program (a power of two) and Triton's warps per program. Compiled for an H100
  at `[100864, 768]` bf16: 8 rows, 4 warps take 72 registers (7 programs per SM); 16 rows
  110 (4 per SM)."""
  rows: int = 8
  num_warps: int = 4


# The tiles `add_normalize` uses by default (bench/gpu_suite.py sets them for A/B runs).
TILES = NormTiles()


def normalize(s, eps: float = EPS):
  """LayerNorm without scale and bias, statistics in float32 (`nn.LayerNorm`'s formula).
  `[..., D]` -> float32 `[..., D]`."""
  s = s.astype(jnp.float32)
  mean = jnp.mean(s, -1, keepdims=True)
  var = jnp.maximum(jnp.mean(jnp.square(s), -1, keepdims=True) - jnp.square(mean), 0.0)
  return (s - mean) * jax.lax.rsqrt(var + eps)


def _column_chunks(width: int):
  """`width` columns as slices of the widest power of two up to 256 that divides it."""
  chunk = math.gcd(width, 256)
  return [pl.ds(c * chunk, chunk) for c in range(width // chunk)]


def _forward_kernel(*refs, eps, has_y, has_bias):
  refs = list(refs)
  x_ref = refs.pop(0)
  y_ref = refs.pop(0) if has_y else None
  bias_ref = refs.pop(0) if has_bias else None
  s_ref = refs.pop(0) if has_y else None
  xn_ref, mean_ref, rstd_ref = refs
  width = x_ref.shape[1]

  def stream(cols):  # s's chunk as stored, in float32, rounded as XLA rounds each add
    s = x_ref[:, cols].astype(jnp.float32)
    if has_y:
      y = y_ref[:, cols].astype(jnp.float32)
      if has_bias:
        y = (y + bias_ref[cols].astype(jnp.float32)[None, :]).astype(x_ref.dtype)
      s = (s + y.astype(jnp.float32)).astype(x_ref.dtype).astype(jnp.float32)
    return s

  total = jnp.zeros((x_ref.shape[0],), jnp.float32)
  squares = jnp.zeros_like(total)
  for cols in _column_chunks(width):
    s = stream(cols)
    if has_y:
      s_ref[:, cols] = s.astype(s_ref.dtype)
    total += jnp.sum(s, axis=1)
    squares += jnp.sum(s * s, axis=1)
  mean = total / width
  rstd = jax.lax.rsqrt(jnp.maximum(squares / width - mean * mean, 0.0) + eps)
  for cols in _column_chunks(width):  # x and y again (cached): not s, written just now
    xn_ref[:, cols] = ((stream(cols) - mean[:, None]) * rstd[:, None]).astype(xn_ref.dtype)
  mean_ref[...] = mean
  rstd_ref[...] = rstd


def _backward_kernel(ds_ref, dxn_ref, s_ref, mean_ref, rstd_ref, dx_ref, *sums_ref):
  width = s_ref.shape[1]
  mean, rstd = mean_ref[...][:, None], rstd_ref[...][:, None]

  def load(cols):
    return (dxn_ref[:, cols].astype(jnp.float32),
            (s_ref[:, cols].astype(jnp.float32) - mean) * rstd)

  grad_mean = jnp.zeros((s_ref.shape[0],), jnp.float32)
  grad_dot = jnp.zeros_like(grad_mean)
  for cols in _column_chunks(width):
    g, xhat = load(cols)
    grad_mean += jnp.sum(g, axis=1)
    grad_dot += jnp.sum(g * xhat, axis=1)
  grad_mean, grad_dot = grad_mean[:, None] / width, grad_dot[:, None] / width
  for cols in _column_chunks(width):
    g, xhat = load(cols)
    dx = ds_ref[:, cols].astype(jnp.float32) + rstd * (g - grad_mean - xhat * grad_dot)
    dx = dx.astype(dx_ref.dtype)
    dx_ref[:, cols] = dx
    if sums_ref:  # the bias gradient's share of this program's rows, as stored
      sums_ref[0][cols] = jnp.sum(dx.astype(jnp.float32), axis=0)


def _row_call(kernel, name, inputs, outputs, tiles: NormTiles, interpret: bool,
              whole=(), per_program=()):
  """`kernel` over blocks of `tiles.rows` rows. `inputs`/`outputs`: arrays /
  ShapeDtypeStructs, `[M, D]` or `[M]` (by row blocks; M a multiple of `tiles.rows`),
  except the inputs indexed in `whole` (read whole by every program) and the outputs in
  `per_program` (`[M // tiles.rows, D]`, one row per program). `name`: the kernel's, as
  profiles show it (`layer_norm_{name}`)."""
  rows = tiles.rows
  programs = inputs[0].shape[0] // rows

  def spec(a, kind):
    if kind == 'whole':
      return pl.BlockSpec(a.shape, lambda i: (0,) * a.ndim)
    if kind == 'per_program':
      return pl.BlockSpec((None, a.shape[1]), lambda i: (i, 0))
    if a.ndim == 1:
      return pl.BlockSpec((rows,), lambda i: (i,))
    return pl.BlockSpec((rows, a.shape[1]), lambda i: (i, 0))

  params = {}
  if not interpret:
    from jax.experimental.pallas import triton as plgpu  # pylint: disable=g-import-not-at-top
    params['compiler_params'] = plgpu.CompilerParams(num_warps=tiles.num_warps,
                                                     num_stages=1)
  return pl.pallas_call(
      kernel, grid=(programs,),
      in_specs=[spec(a, 'whole' if i in whole else 'rows') for i, a in enumerate(inputs)],
      out_specs=[spec(a, 'per_program' if i in per_program else 'rows')
                 for i, a in enumerate(outputs)],
      out_shape=outputs, interpret=interpret,
      name='layer_norm_' + name, **params)(*inputs)


def _forward(x, y, bias, eps, tiles, interpret):
  """`x`, `y` (or None) `[M, D]`, `bias` (or None) `[D]` -> `s` (`x` itself without `y`),
  `xn`, mean, rstd."""
  has_y, has_bias = y is not None, bias is not None
  rows_in = [x] + ([y] if has_y else [])

  def run(*arrays):
    m, width = arrays[0].shape
    padded = [pad_rows(a, tiles.rows) for a in arrays[:len(rows_in)]]
    padded += arrays[len(rows_in):]
    rows = padded[0].shape[0]
    matrix = jax.ShapeDtypeStruct((rows, width), x.dtype)
    vector = jax.ShapeDtypeStruct((rows,), jnp.float32)
    outs = _row_call(functools.partial(_forward_kernel, eps=eps, has_y=has_y,
                                       has_bias=has_bias),
                     'add_forward' if has_y else 'forward', padded,
                     [matrix] * (2 if has_y else 1) + [vector] * 2, tiles, interpret,
                     whole=(len(rows_in),) if has_bias else ())
    return tuple(o[:m] for o in outs)

  arrays = rows_in + ([bias] if has_bias else [])
  in_roles = ['b.'] * len(rows_in) + (['.'] if has_bias else [])
  out_roles = ['b.'] * (2 if has_y else 1) + ['b', 'b']
  outs = pallas_sharding.sharded(run, in_roles, out_roles)(*arrays)
  return outs if has_y else (x, *outs)


def _backward(ds, dxn, s, mean, rstd, with_sums, tiles, interpret):
  """`dx [M, D]`, and with `with_sums` its float32 column sums `[D]` (the bias gradient)."""
  def run(ds, dxn, s, mean, rstd):
    m, width = ds.shape
    padded = [pad_rows(a, tiles.rows) for a in (ds, dxn, s, mean, rstd)]
    outs = [jax.ShapeDtypeStruct(padded[0].shape, s.dtype)]
    if with_sums:  # padded rows have ds = dxn = 0, so dx = 0 there
      outs.append(jax.ShapeDtypeStruct((padded[0].shape[0] // tiles.rows, width),
                                       jnp.float32))
    outs = _row_call(_backward_kernel, 'backward', padded, outs, tiles, interpret,
                     per_program=(1,))
    return (outs[0][:m],) + ((jnp.sum(outs[1], axis=0),) if with_sums else ())
  out_roles = ['b.'] + (['.'] if with_sums else [])
  return pallas_sharding.sharded(run, ['b.', 'b.', 'b.', 'b', 'b'], out_roles,
                                 summed=(1,) if with_sums else ())(ds, dxn, s, mean, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _fused(x, y, bias, has_y, eps, tiles, interpret):
  """`(s, xn)`; `y` is None unless `has_y`, `bias` None or `[D]`."""
  return _fused_fwd(x, y, bias, has_y, eps, tiles, interpret)[0]


def _fused_fwd(x, y, bias, has_y, eps, tiles, interpret):
  del has_y  # `y` is None without it
  s, xn, mean, rstd = _forward(x, y, bias, eps, tiles, interpret)
  return (s, xn), (s, mean, rstd, bias)  # the bias ([D] or None): for its dtype


def _fused_bwd(has_y, eps, tiles, interpret, residuals, cotangents):
  del eps
  s, mean, rstd, bias = residuals
  ds, dxn = cotangents
  outs = _backward(ds.astype(s.dtype), dxn.astype(s.dtype), s, mean, rstd,
                   bias is not None, tiles, interpret)
  dx = outs[0]
  return dx, (dx if has_y else None), (None if bias is None else outs[1].astype(bias.dtype))


_fused.defvjp(_fused_fwd, _fused_bwd)


def add_normalize(x, y=None, bias=None, *, impl: str = 'xla',
                  tiles: NormTiles | None = None, eps: float = EPS):
  """`(s, normalize(s))` with `s = x + (y + bias)` (`x` itself when `y` is None; no bias
  when `bias` is None): `x`, `y` `[..., D]` and `bias` `[D]`, of one dtype -> `s` in that
  dtype and the normalised `s`: float32 with impl 'xla' (XLA's ops, any backend), `x`'s
  dtype with 'pallas' (the GPU kernels) or 'pallas_interpret' (the same kernels in Pallas'
  interpreter, any backend). The bias is the last matmul's, added here so that no pass of
  its own adds it; its gradient comes from the backward kernel's column sums."""
  if impl not in IMPLS:
    raise ValueError(f'norm_impl={impl!r}: expected one of {IMPLS}.')
  if bias is not None and y is None:
    raise ValueError('add_normalize: a bias needs y (it is added to y).')
  if impl == 'xla':
    s = x if y is None else x + (y if bias is None else y + bias)
    return s, normalize(s, eps)
  if impl == 'pallas':
    gpu_target.require_gpu("norm_impl='pallas'",
                           "'xla', or 'pallas_interpret' to run the same kernels interpreted")
  if y is not None and (y.shape != x.shape or y.dtype != x.dtype):
    raise ValueError(f'add_normalize: x {x.dtype}{list(x.shape)} and y '
                     f'{y.dtype}{list(y.shape)} must have one shape and dtype.')
  if bias is not None and (bias.shape != x.shape[-1:] or bias.dtype != x.dtype):
    raise ValueError(f'add_normalize: bias {bias.dtype}{list(bias.shape)}: expected '
                     f'{x.dtype}{list(x.shape[-1:])}.')
  tiles = tiles or TILES
  if tiles.rows & (tiles.rows - 1):
    raise ValueError(f'NormTiles.rows={tiles.rows}: expected a power of two.')
  shape = x.shape
  flat = lambda a: None if a is None else a.reshape(-1, shape[-1])
  s, xn = _fused(flat(x), flat(y), bias, y is not None, eps, tiles,
                 impl == 'pallas_interpret')
  return s.reshape(shape), xn.reshape(shape)
