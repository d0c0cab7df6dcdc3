"""Flash attention for short, ragged sequences: Pallas kernels that Triton compiles (NVIDIA
GPUs; `interpret=True` runs them anywhere).

`attention(q, k, v, valid_keys)`: softmax attention over `[B, N, H, D]` q/k/v (q already
scaled) where only the first `valid_keys` tokens are keys. Unlike JAX's Pallas attention
(jax.experimental.pallas.ops.gpu.attention), N need not be a multiple of the tiles: the last
tile's rows are masked in the loads and stores, so ViT's 197 tokens are read in place instead
of being padded to 256 in every layer. Keys from `valid_keys` on (the padding the encoder adds
once) are masked out of the softmax; their queries are computed like any other. `causal=True`
(Image GPT) also masks every key after its query, and skips the key tiles wholly after a
query tile. `bias=` takes the q/k/v projections' biases and applies them inside the kernels
(ViT's attention), so XLA does not add them in passes of their own.

Forward: one program per (query tile, batch, head), an online softmax over the key tiles
(FlashAttention-2), saving the rows' log-sum-exp. Backward: a dq kernel, one program per
query tile, which also writes the rows' `delta = sum(dO * O)`; then a dk/dv kernel, one
program per key tile, looping over the query tiles. Scores are kept in base 2 (`exp2`).

The last, partial tile of queries and of keys is shrunk to the least power of two that
holds its rows (at least `Tiles.min_tail`): ViT's 197 = 3 x 64 + 5 tokens then take three
64-row tiles and a 16-row one, and the score work falls from 256^2 to 208^2 per head
instead of the 197^2 needed. (Causal attention's forward and dq loops keep whole key tiles:
how many a query tile sees is only known at run time.)

`attention_kvq(kvq, valid_keys)`: the same on q, k and v packed in one `[B, N, 3, H, D]`
array, whose gradient the kernels write packed. The kernels are in vision_core.flash_kernels;
on a device mesh each device runs them on its shard of the batch and heads
(vision_core.pallas_sharding).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from vision_core.flash_kernels import Slot, call, dkv_kernel, dkv_packed_kernel, dq_kernel
from vision_core.flash_kernels import forward_kernel


@dataclasses.dataclass(frozen=True)
class Tiles:
  """Rows per tile: `queries` and `keys` of the forward and dq kernels, `backward_keys` and
  `backward_queries` of the dk/dv kernel (each a power of two, >= 16 on a GPU); Triton's
  warps per program and pipeline stages; the least rows of a last, partial tile
  (`min_tail`, a power of two: 16 is the least Triton's matmuls take; the tile size turns
  the shrinking off). 64 rows is the least that Hopper's warpgroup matmul (wgmma) takes."""
  queries: int = 64
  keys: int = 64
  backward_keys: int = 64
  backward_queries: int = 64
  num_warps: int = 4
  num_stages: int = 3  # 3 beat 2 on an H100 in sessions 18 and 19 (docs/benchmarks.md)
  min_tail: int = 16


# The tiles `attention(tiles=None)` uses, read when it is traced (bench/gpu_suite.py
# --flash-tiles sets them to try others).
TILES = Tiles()


def _check(q, k, v, valid_keys, bias, order="q, k and v's"):
  if not q.shape == k.shape == v.shape or q.ndim != 4:
    raise ValueError(f'q, k, v: expected three [B, N, H, D] arrays of one shape, got '
                     f'{q.shape}, {k.shape}, {v.shape}.')
  if not 1 <= valid_keys <= q.shape[1]:
    raise ValueError(f'valid_keys={valid_keys}: expected 1..{q.shape[1]} (the tokens).')
  if bias is not None and bias.shape != (3, *q.shape[2:]):
    raise ValueError(f'bias: expected [3, H, D] = {[3, *q.shape[2:]]} ({order}), got '
                     f'{list(bias.shape)}.')


def attention(q, k, v, valid_keys: int, tiles: Tiles | None = None, interpret: bool = False,
              *, causal: bool = False, bias=None):
  """`q, k, v [B, N, H, D]` -> `[B, N, H, D]` in q's dtype; keys `>= valid_keys` masked, and
  with `causal` every key after its query (token i attends to 0..i; the tiles wholly after
  a query tile are not visited). `tiles`: None for TILES. `bias`: None, or `[3, H, D]`
  added to q, k and v (the projections' `x @ w + b`) inside the kernels, so the biased
  arrays are never written and read back. Only q's is added to its tiles. k's adds the
  same `q . b_k` to all of a query's scores, which softmax cancels: it changes nothing,
  and its gradient is exactly zero. v's adds `sum_j p_ij b_v = b_v` to each output row:
  it is added to the output once (and taken out of O in the backward's `dO . O`)."""
  _check(q, k, v, valid_keys, bias)
  return _attention(q, k, v, bias, (valid_keys, causal), tiles or TILES, interpret)


# The slots of q, k and v in a bias (and in attention_kvq's packed array).
_QKV, _KVQ = (0, 1, 2), (2, 0, 1)


# `mask`: (valid_keys, causal), static.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, bias, mask, tiles, interpret):
  return _forward(q, k, v, bias, mask, tiles, interpret)[0]


def _padded_bias(bias, like, order):
  """`[3, H, D]` -> q's and v's `[H, Dp]` biases in `like`'s dtype, zero past D. `order`:
  the slots of q, k and v in `bias`."""
  if bias is None:
    return None
  pad = pl.next_power_of_2(bias.shape[-1]) - bias.shape[-1]
  bias = jnp.pad(bias.astype(like.dtype), ((0, 0), (0, 0), (0, pad)))
  return bias[order[0]], bias[order[2]]


def _forward(q, k, v, bias, mask, tiles, interpret):
  out, lse = call(forward_kernel, (q, k, v), (q, 'rows'), tiles.queries, tiles, interpret,
                  mask, _padded_bias(bias, q, _QKV))
  return out, (q, k, v, bias, out, lse)


def _backward(mask, tiles, interpret, residuals, d_out):
  q, k, v, bias, out, lse = residuals
  rows = _padded_bias(bias, q, _QKV)
  dq, delta, *sums = call(dq_kernel, (q, k, v, out, d_out, lse), (q, 'rows', *_sums(bias)),
                          tiles.queries, tiles, interpret, mask, rows)
  dk, dv = call(dkv_kernel, (q, k, v, d_out, lse, delta), (k, v), tiles.backward_keys,
                tiles, interpret, mask, rows)
  return dq, dk, dv, _bias_grad(bias, *sums, order=_QKV)


def _sums(bias):
  """The dq kernel's extra results where there are biases: its tiles' sums of dq and dO."""
  return () if bias is None else ('tile_sums', 'tile_sums')


def _bias_grad(bias, dq_sums=None, do_sums=None, *, order):
  """The `[3, H, D]` biases' gradient from the dq kernel's `[B, programs, H, Dp]` tile sums
  (both biases are added to every row, padding tokens' too): q's is the sum of dq, v's the
  sum of dO, k's zero (it changes nothing). `order`: the slots of q, k and v in `bias`."""
  if bias is None:
    return None
  depth = bias.shape[-1]
  total = lambda sums: jnp.sum(sums, axis=(0, 1))[:, :depth]
  grads = {order[0]: total(dq_sums), order[1]: jnp.zeros(bias.shape[1:], jnp.float32),
           order[2]: total(do_sums)}
  return jnp.stack([grads[i] for i in range(3)]).astype(bias.dtype)


_attention.defvjp(_forward, _backward)


def attention_kvq(kvq, valid_keys: int, tiles: Tiles | None = None, interpret: bool = False,
                  *, causal: bool = False, bias=None):
  """`attention(q, k, v, ...)` on one packed `kvq [B, N, 3, H, D]` array: k, v and q stacked
  in that order on axis 2 (one projection's output, `x @ [D, 3, H, D]`), and `bias`
  `[3, H, D]` in that order too. -> `[B, N, H, D]`.

  Why: the gradient comes back packed the same way, written in place by the kernels (dq
  into its slot, then dk and dv into theirs), so the projections' input gradient is one
  matmul; three separate q, k, v give three and a pass summing them (2.2 ms of the ViT-B/16
  step on an H100, session 19). Why k, v, q: the dk/dv kernel stores its two gradients as
  one block of two slots, and blocks start at multiples of their size."""
  if kvq.ndim != 5 or kvq.shape[2] != 3:
    raise ValueError(f'kvq: expected [B, N, 3, H, D] (k, v, q), got {list(kvq.shape)}.')
  k, v, q = (jax.ShapeDtypeStruct(kvq.shape[:2] + kvq.shape[3:], kvq.dtype),) * 3
  _check(q, k, v, valid_keys, bias, order="k, v and q's")
  return _attention_kvq(kvq, bias, (valid_keys, causal), tiles or TILES, interpret)


def _qkv_slots(kvq):
  return tuple(Slot(kvq, i) for i in _KVQ)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _attention_kvq(kvq, bias, mask, tiles, interpret):
  return _forward_kvq(kvq, bias, mask, tiles, interpret)[0]


def _forward_kvq(kvq, bias, mask, tiles, interpret):
  out = jax.ShapeDtypeStruct(kvq.shape[:2] + kvq.shape[3:], kvq.dtype)
  out, lse = call(forward_kernel, _qkv_slots(kvq), (out, 'rows'), tiles.queries, tiles,
                  interpret, mask, _padded_bias(bias, kvq, _KVQ))
  return out, (kvq, bias, out, lse)


def _backward_kvq(mask, tiles, interpret, residuals, d_out):
  kvq, bias, out, lse = residuals
  rows = _padded_bias(bias, kvq, _KVQ)
  grad = jax.ShapeDtypeStruct(kvq.shape, kvq.dtype)
  d_kvq, delta, *sums = call(dq_kernel, (*_qkv_slots(kvq), out, d_out, lse),
                             (Slot(grad, 2), 'rows', *_sums(bias)), tiles.queries, tiles,
                             interpret, mask, rows)
  (d_kvq,) = call(dkv_packed_kernel, (*_qkv_slots(kvq), d_out, lse, delta, Slot(d_kvq, 0, 2)),
                  (Slot(grad, 0, 2),), tiles.backward_keys, tiles, interpret, mask, rows,
                  alias_last_input=True)
  return d_kvq, _bias_grad(bias, *sums, order=_KVQ)


_attention_kvq.defvjp(_forward_kvq, _backward_kvq)
