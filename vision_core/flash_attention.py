"""Flash attention for short, ragged sequences: Pallas kernels that Triton compiles (NVIDIA
GPUs; `interpret=True` runs them anywhere).

`attention(q, k, v, valid_keys)`: softmax attention over `[B, N, H, D]` q/k/v (q already
scaled) where only the first `valid_keys` tokens are keys. Unlike JAX's Pallas attention
(jax.experimental.pallas.ops.gpu.attention), N need not be a multiple of the tiles: the last
tile's rows are masked in the loads and stores, so ViT's 197 tokens are read in place instead
of being padded to 256 in every layer. Keys from `valid_keys` on (the padding the encoder adds
once) are masked out of the softmax; their queries are computed like any other. `causal=True`
(Image GPT) also masks every key after its query, and skips the key tiles wholly after a
query tile.

Forward: one program per (query tile, batch, head), an online softmax over the key tiles
(FlashAttention-2), saving the rows' log-sum-exp. Backward: a dq kernel, one program per
query tile, which also writes the rows' `delta = sum(dO * O)`; then a dk/dv kernel, one
program per key tile, looping over the query tiles. Scores are kept in base 2 (`exp2`).

The last, partial tile of queries and of keys is shrunk to the least power of two that
holds its rows (at least `Tiles.min_tail`): ViT's 197 = 3 x 64 + 5 tokens then take three
64-row tiles and a 16-row one, and the score work falls from 256^2 to 208^2 per head
instead of the 197^2 needed. (Causal attention's forward and dq loops keep whole key tiles:
how many a query tile sees is only known at run time.)
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_LOG2E = math.log2(math.e)
_MASKED = -1e30  # a score no key reaches; exp2 of it minus any real score is 0


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
  num_stages: int = 2
  min_tail: int = 16


# The tiles `attention(tiles=None)` uses, read when it is traced (bench/gpu_suite.py
# --flash-tiles sets them to try others).
TILES = Tiles()


def _split(count: int, tile: int, min_tail: int):
  """`count` rows in tiles of `tile` -> `(whole, last)`: `whole` tiles of `tile` rows, then
  (where `last` > 0) one of `last` rows, the least power of two >= the rest and `min_tail`.
  A rest that would need the whole tile is one more whole tile, masked like any ragged one."""
  whole, rest = divmod(count, tile)
  last = max(min_tail, pl.next_power_of_2(rest)) if rest else 0
  return (whole + 1, 0) if last >= tile else (whole, last)


def _each_program(body, tokens, rows, min_tail):
  """Runs `body(start, rows)` for this program's tile of the `tokens` rows: tile i starts
  at `i * rows`; the last one has the shrunk size `_split` gives."""
  # Starts are traced values (`i * rows`, not `whole * rows`): `pl.ds` refuses a start known
  # when tracing whose slice ends past the block, and a shrunk tile may (its rows there are
  # masked).
  whole, last = _split(tokens, rows, min_tail)
  i = pl.program_id(0)
  if not last:
    body(i * rows, rows)
  elif not whole:
    body(i * rows, last)
  else:  # two static shapes: Triton compiles both and each program runs one
    pl.when(i < whole)(lambda: body(i * rows, rows))
    pl.when(i == whole)(lambda: body(i * rows, last))


def _over_tiles(step, carry, first, count, tile, min_tail):
  """`carry = step(start, rows, carry)` over the tiles of rows `first * tile:count` (`first`
  may be traced), the last shrunk as `_split` gives."""
  whole, last = _split(count, tile, min_tail)
  carry = jax.lax.fori_loop(first, whole, lambda j, c: step(j * tile, tile, c), carry)
  if not last:
    return carry
  # A one-trip loop, so that the start is traced (see _each_program).
  return jax.lax.fori_loop(whole, whole + 1, lambda j, c: step(j * tile, last, c), carry)


def _tiles(start, size, tokens, depth, *refs):
  """Rows `start:start + size` of `[N, D]` blocks: `(rows, rows < N, [tiles [size, Dp]])`,
  the tiles zero past N and D."""
  rows = start + jnp.arange(size)
  rows_ok = rows < tokens
  mask = rows_ok[:, None] & (jnp.arange(refs[0].shape[-1]) < depth)[None, :]
  return rows, rows_ok, [plgpu.load(ref.at[pl.ds(start, size), :], mask=mask, other=0.0)
                         for ref in refs]


def _store(ref, start, value, valid_rows, depth):
  cols = jnp.arange(ref.shape[-1]) < depth
  plgpu.store(ref.at[pl.ds(start, value.shape[0]), :], value.astype(ref.dtype),
              mask=valid_rows[:, None] & cols[None, :])


def _key_tiles(start, bq, bk, valid_keys, causal):
  """How many key tiles the queries `start:start + bq` attend to (causal: none past the
  tile's last query)."""
  count = pl.cdiv(valid_keys, bk)
  return jnp.minimum(count, pl.cdiv(start + bq, bk)) if causal else count


def _visible(queries, keys, valid_keys, causal):
  """`[len(queries), len(keys)]`: which keys each query attends to."""
  ok = (keys < valid_keys)[None, :]
  return ok & (keys[None, :] <= queries[:, None]) if causal else ok


def _over_keys(step, carry, start, bq, valid_keys, causal, tiles):
  """The forward's and dq's loop over the key tiles that the queries `start:start + bq` see."""
  bk = tiles.keys
  if causal:
    count = _key_tiles(start, bq, bk, valid_keys, causal)
    return jax.lax.fori_loop(0, count, lambda j, c: step(j * bk, bk, c), carry)
  return _over_tiles(step, carry, 0, valid_keys, bk, tiles.min_tail)


def _forward_kernel(q_ref, k_ref, v_ref, o_ref, lse_ref, *, tokens, valid_keys, causal, depth,
                    tiles):

  def program(start, bq):
    rows, rows_ok, (q,) = _tiles(start, bq, tokens, depth, q_ref)

    def step(key_start, bk, carry):
      acc, m, l = carry
      keys, _, (k, v) = _tiles(key_start, bk, tokens, depth, k_ref, v_ref)
      s = plgpu.dot(q, k, trans_b=True) * _LOG2E  # [bq, bk], base 2
      s = jnp.where(_visible(rows, keys, valid_keys, causal), s, _MASKED)
      m_new = jnp.maximum(m, jnp.max(s, axis=1))
      p = jnp.exp2(s - m_new[:, None])
      rescale = jnp.exp2(m - m_new)
      acc = acc * rescale[:, None] + plgpu.dot(p.astype(v.dtype), v)
      return acc, m_new, l * rescale + jnp.sum(p, axis=1)

    init = (jnp.zeros((bq, q.shape[1]), jnp.float32), jnp.full((bq,), _MASKED, jnp.float32),
            jnp.zeros((bq,), jnp.float32))
    acc, m, l = _over_keys(step, init, start, bq, valid_keys, causal, tiles)
    _store(o_ref, start, acc / l[:, None], rows_ok, depth)
    plgpu.store(lse_ref.at[pl.ds(start, bq)], m + jnp.log2(l), mask=rows_ok)

  _each_program(program, tokens, tiles.queries, tiles.min_tail)


def _dq_kernel(q_ref, k_ref, v_ref, o_ref, do_ref, lse_ref, dq_ref, delta_ref, *, tokens,
               valid_keys, causal, depth, tiles):

  def program(start, bq):
    rows, rows_ok, (q, do, o) = _tiles(start, bq, tokens, depth, q_ref, do_ref, o_ref)
    delta = jnp.sum(o.astype(jnp.float32) * do.astype(jnp.float32), axis=1)  # [bq]
    lse = plgpu.load(lse_ref.at[pl.ds(start, bq)], mask=rows_ok, other=0.0)

    def step(key_start, bk, dq):
      keys, _, (k, v) = _tiles(key_start, bk, tokens, depth, k_ref, v_ref)
      p = jnp.exp2(plgpu.dot(q, k, trans_b=True) * _LOG2E - lse[:, None])
      p = jnp.where(_visible(rows, keys, valid_keys, causal), p, 0.0)
      ds = p * (plgpu.dot(do, v, trans_b=True) - delta[:, None])
      return dq + plgpu.dot(ds.astype(k.dtype), k)

    dq = _over_keys(step, jnp.zeros((bq, q.shape[1]), jnp.float32), start, bq, valid_keys,
                    causal, tiles)
    _store(dq_ref, start, dq, rows_ok, depth)
    plgpu.store(delta_ref.at[pl.ds(start, bq)], delta, mask=rows_ok)

  _each_program(program, tokens, tiles.queries, tiles.min_tail)


def _dkv_kernel(q_ref, k_ref, v_ref, do_ref, lse_ref, delta_ref, dk_ref, dv_ref, *, tokens,
                valid_keys, causal, depth, tiles):
  bq = tiles.backward_queries

  def program(start, bk):
    keys, keys_ok, (k, v) = _tiles(start, bk, tokens, depth, k_ref, v_ref)

    def step(query_start, bq, carry):
      dk, dv = carry
      rows, rows_ok, (q, do) = _tiles(query_start, bq, tokens, depth, q_ref, do_ref)
      lse = plgpu.load(lse_ref.at[pl.ds(query_start, bq)], mask=rows_ok, other=0.0)
      delta = plgpu.load(delta_ref.at[pl.ds(query_start, bq)], mask=rows_ok, other=0.0)
      p_t = jnp.exp2(plgpu.dot(k, q, trans_b=True) * _LOG2E - lse[None, :])  # [bk, bq]
      # Query rows past N load as zeros (q, dO, lse, delta): their p is 1 but add nothing.
      p_t = jnp.where(_visible(rows, keys, valid_keys, causal).T, p_t, 0.0)
      dv = dv + plgpu.dot(p_t.astype(do.dtype), do)
      ds_t = p_t * (plgpu.dot(v, do, trans_b=True) - delta[None, :])
      return dk + plgpu.dot(ds_t.astype(q.dtype), q), dv

    zeros = jnp.zeros((bk, k.shape[1]), jnp.float32)
    # Causal: query tiles before the first query that sees these keys are skipped.
    first = start // bq if causal else 0
    dk, dv = _over_tiles(step, (zeros, zeros), first, tokens, bq, tiles.min_tail)
    _store(dk_ref, start, dk, keys_ok, depth)
    _store(dv_ref, start, dv, keys_ok, depth)

  _each_program(program, tokens, tiles.backward_keys, tiles.min_tail)


def _call(kernel, inputs, outputs, rows_per_program, tiles, interpret, mask):
  """`kernel` over a (tile of N, batch, head) grid. `inputs`: `[B, N, H, D]` arrays (whole
  rows of one head per program; D padded to a power of two in the block) or `[B, H, N]` row
  statistics; `outputs`: arrays like `inputs[0]`, or 'rows' for float32 row statistics.
  `mask`: `(valid_keys, causal)`."""
  batch, tokens, heads, depth = inputs[0].shape
  outputs = [jax.ShapeDtypeStruct((batch, heads, tokens), jnp.float32) if isinstance(o, str)
             else jax.ShapeDtypeStruct(o.shape, o.dtype) for o in outputs]
  depth_block = pl.next_power_of_2(depth)

  def spec(shape):
    if len(shape) == 4:
      return pl.BlockSpec((None, tokens, None, depth_block), lambda _, b, h: (b, 0, h, 0))
    return pl.BlockSpec((None, None, tokens), lambda _, b, h: (b, h, 0))

  return pl.pallas_call(
      functools.partial(kernel, tokens=tokens, depth=depth, tiles=tiles, valid_keys=mask[0],
                        causal=mask[1]),
      grid=(pl.cdiv(tokens, rows_per_program), batch, heads),
      in_specs=[spec(x.shape) for x in inputs],
      out_specs=[spec(o.shape) for o in outputs],
      out_shape=outputs,
      compiler_params=plgpu.CompilerParams(num_warps=tiles.num_warps,
                                           num_stages=tiles.num_stages),
      interpret=interpret,
      # 'flash_attention_forward' etc.: bench/profile_train_step.py classes it as attention.
      name='flash_attention_' + kernel.__name__.strip('_').removesuffix('_kernel'))(*inputs)


def _check(q, k, v, valid_keys):
  if not q.shape == k.shape == v.shape or q.ndim != 4:
    raise ValueError(f'q, k, v: expected three [B, N, H, D] arrays of one shape, got '
                     f'{q.shape}, {k.shape}, {v.shape}.')
  if not 1 <= valid_keys <= q.shape[1]:
    raise ValueError(f'valid_keys={valid_keys}: expected 1..{q.shape[1]} (the tokens).')


def attention(q, k, v, valid_keys: int, tiles: Tiles | None = None, interpret: bool = False,
              *, causal: bool = False):
  """`q, k, v [B, N, H, D]` -> `[B, N, H, D]` in q's dtype; keys `>= valid_keys` masked, and
  with `causal` every key after its query (token i attends to 0..i; the tiles wholly after
  a query tile are not visited). `tiles`: None for TILES."""
  _check(q, k, v, valid_keys)
  return _attention(q, k, v, (valid_keys, causal), tiles or TILES, interpret)


# `mask`: (valid_keys, causal), static.
@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _attention(q, k, v, mask, tiles, interpret):
  return _forward(q, k, v, mask, tiles, interpret)[0]


def _forward(q, k, v, mask, tiles, interpret):
  out, lse = _call(_forward_kernel, (q, k, v), (q, 'rows'), tiles.queries, tiles, interpret,
                   mask)
  return out, (q, k, v, out, lse)


def _backward(mask, tiles, interpret, residuals, d_out):
  q, k, v, out, lse = residuals
  dq, delta = _call(_dq_kernel, (q, k, v, out, d_out, lse), (q, 'rows'), tiles.queries,
                    tiles, interpret, mask)
  dk, dv = _call(_dkv_kernel, (q, k, v, d_out, lse, delta), (k, v), tiles.backward_keys,
                 tiles, interpret, mask)
  return dq, dk, dv


_attention.defvjp(_forward, _backward)
