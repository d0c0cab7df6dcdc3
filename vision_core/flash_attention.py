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
  num_stages: int = 3  # 3 beat 2 on an H100 in sessions 18 and 19 (docs/benchmarks.md)
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


def _tiles(start, size, tokens, depth, *refs, biases=()):
  """Rows `start:start + size` of `[N, D]` blocks: `(rows, rows < N, [tiles [size, Dp]])`,
  the tiles zero past N and D. `biases`: a `[Dp]` row (or None) per ref, added to the rows
  before N only: a row past N stays zero, which the kernels rely on."""
  rows = start + jnp.arange(size)
  rows_ok = rows < tokens
  mask = rows_ok[:, None] & (jnp.arange(refs[0].shape[-1]) < depth)[None, :]
  tiles = [plgpu.load(ref.at[pl.ds(start, size), :], mask=mask, other=0.0) for ref in refs]
  for i, bias in enumerate(biases):
    if bias is not None:
      tiles[i] = tiles[i] + jnp.where(rows_ok[:, None], bias[None, :], 0).astype(tiles[i].dtype)
  return rows, rows_ok, tiles


def _load_biases(refs, biased):
  """A kernel's refs after q, k, v -> `((q's bias, v's bias) [Dp] or Nones, other refs)`."""
  if not biased:
    return (None, None), refs
  return tuple(ref[...] for ref in refs[:2]), refs[2:]


def _store(ref, start, value, valid_rows, depth):
  """`value` into rows `start:` of an `[N, Dp]` block, or of slot `i` of an `[N, 2, Dp]`
  block where `ref` is `(block, i)`."""
  ref, slot = ref if isinstance(ref, tuple) else (ref, None)
  rows = pl.ds(start, value.shape[0])
  cols = jnp.arange(ref.shape[-1]) < depth
  # The slot as an array: store's indexing takes no Python int.
  index = (rows, slice(None)) if slot is None else (rows, jnp.int32(slot), slice(None))
  plgpu.store(ref.at[index], value.astype(ref.dtype), mask=valid_rows[:, None] & cols[None, :])


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


def _forward_kernel(q_ref, k_ref, v_ref, *refs, tokens, valid_keys, causal, depth, tiles,
                    biased):
  (qb, vb), (o_ref, lse_ref) = _load_biases(refs, biased)

  def program(start, bq):
    rows, rows_ok, (q,) = _tiles(start, bq, tokens, depth, q_ref, biases=(qb,))

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
    out = acc / l[:, None]
    _store(o_ref, start, out if vb is None else out + vb[None, :], rows_ok, depth)
    plgpu.store(lse_ref.at[pl.ds(start, bq)], m + jnp.log2(l), mask=rows_ok)

  _each_program(program, tokens, tiles.queries, tiles.min_tail)


def _dq_kernel(q_ref, k_ref, v_ref, *refs, tokens, valid_keys, causal, depth, tiles, biased):
  (qb, vb), (o_ref, do_ref, lse_ref, dq_ref, delta_ref) = _load_biases(refs, biased)

  def program(start, bq):
    rows, rows_ok, (q, do, o) = _tiles(start, bq, tokens, depth, q_ref, do_ref, o_ref,
                                       biases=(qb,))
    o = o.astype(jnp.float32)
    if vb is not None:  # dO.(O - b_v): the dot products below use v without its bias
      o = o - vb[None, :].astype(jnp.float32)
    delta = jnp.sum(o * do.astype(jnp.float32), axis=1)  # [bq]
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


def _dkv_kernel(q_ref, k_ref, v_ref, *refs, tokens, valid_keys, causal, depth, tiles, biased):
  (qb, _), (do_ref, lse_ref, delta_ref, dk_ref, dv_ref) = _load_biases(refs, biased)
  bq = tiles.backward_queries

  def program(start, bk):
    keys, keys_ok, (k, v) = _tiles(start, bk, tokens, depth, k_ref, v_ref)

    def step(query_start, bq, carry):
      dk, dv = carry
      rows, rows_ok, (q, do) = _tiles(query_start, bq, tokens, depth, q_ref, do_ref,
                                      biases=(qb,))
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


def _dkv_packed_kernel(*refs, **settings):
  """_dkv_kernel writing k's and v's gradients into one `[N, 2, Dp]` block of the packed
  gradient. The input before it is that gradient's buffer (aliased, not read)."""
  *refs, _, d_kv_ref = refs
  _dkv_kernel(*refs, (d_kv_ref, 0), (d_kv_ref, 1), **settings)


@dataclasses.dataclass(frozen=True)
class _Slot:
  """Part of a packed `[B, N, 3, H, D]` array (attention_kvq's): `size` slots (1 or 2) from
  `index * size` on axis 2. A block of two slots is one ref `[N, 2, Dp]` in the kernel."""
  array: jax.Array | jax.ShapeDtypeStruct
  index: int
  size: int = 1


def _call(kernel, inputs, outputs, rows_per_program, tiles, interpret, mask, bias, *,
          alias_last_input=False):
  """`kernel` over a (tile of N, batch, head) grid. `inputs`: q, k, v, then other
  `[B, N, H, D]` arrays (whole rows of one head per program; D padded to a power of two in
  the block) or `[B, H, N]` row statistics; any of the `[B, N, H, D]` ones may be `_Slot`s
  of a packed array. `outputs`: arrays (or shapes) like those, `_Slot`s, or 'rows' for
  float32 row statistics. `mask`: `(valid_keys, causal)`. `bias`: None or q's and v's
  `[H, Dp]` biases, passed after q, k, v (one `[Dp]` row per program).
  `alias_last_input`: the last input is the buffer of output 0 (written in place)."""
  first = inputs[0].array if isinstance(inputs[0], _Slot) else inputs[0]
  batch, tokens, heads, depth = (first.shape[:2] + first.shape[3:] if first.ndim == 5
                                 else first.shape)
  depth_block = pl.next_power_of_2(depth)

  def spec(x):
    if isinstance(x, _Slot):
      slots = None if x.size == 1 else x.size
      return pl.BlockSpec((None, tokens, slots, None, depth_block),
                          lambda _, b, h: (b, 0, x.index, h, 0))
    if len(x.shape) == 4:
      return pl.BlockSpec((None, tokens, None, depth_block), lambda _, b, h: (b, 0, h, 0))
    if len(x.shape) == 2:  # a bias
      return pl.BlockSpec((None, depth_block), lambda _, b, h: (h, 0))
    return pl.BlockSpec((None, None, tokens), lambda _, b, h: (b, h, 0))

  def shape(o):
    if isinstance(o, str):
      return jax.ShapeDtypeStruct((batch, heads, tokens), jnp.float32)
    o = o.array if isinstance(o, _Slot) else o
    return jax.ShapeDtypeStruct(o.shape, o.dtype)

  if bias is not None:
    inputs = (*inputs[:3], *bias, *inputs[3:])
  body = functools.partial(kernel, tokens=tokens, depth=depth, tiles=tiles,
                           valid_keys=mask[0], causal=mask[1], biased=bias is not None)
  arrays = [x.array if isinstance(x, _Slot) else x for x in inputs]
  return pl.pallas_call(
      body,
      grid=(pl.cdiv(tokens, rows_per_program), batch, heads),
      in_specs=[spec(x) for x in inputs],
      out_specs=[spec(o) if not isinstance(o, str) else spec(shape(o)) for o in outputs],
      out_shape=[shape(o) for o in outputs],
      input_output_aliases={len(inputs) - 1: 0} if alias_last_input else {},
      compiler_params=plgpu.CompilerParams(num_warps=tiles.num_warps,
                                           num_stages=tiles.num_stages),
      interpret=interpret,
      # 'flash_attention_forward' etc.: bench/profile_train_step.py classes it as attention.
      name='flash_attention_' + kernel.__name__.strip('_').removesuffix('_kernel'))(*arrays)


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


# `mask`: (valid_keys, causal), static.
@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def _attention(q, k, v, bias, mask, tiles, interpret):
  return _forward(q, k, v, bias, mask, tiles, interpret)[0]


def _padded_bias(bias, like):
  """`[3, H, D]` -> q's and v's `[H, Dp]` biases in `like`'s dtype, zero past D."""
  if bias is None:
    return None
  pad = pl.next_power_of_2(bias.shape[-1]) - bias.shape[-1]
  bias = jnp.pad(bias.astype(like.dtype), ((0, 0), (0, 0), (0, pad)))
  return bias[0], bias[2]


def _forward(q, k, v, bias, mask, tiles, interpret):
  out, lse = _call(_forward_kernel, (q, k, v), (q, 'rows'), tiles.queries, tiles, interpret,
                   mask, _padded_bias(bias, q))
  return out, (q, k, v, bias, out, lse)


def _backward(mask, tiles, interpret, residuals, d_out):
  q, k, v, bias, out, lse = residuals
  rows = _padded_bias(bias, q)
  dq, delta = _call(_dq_kernel, (q, k, v, out, d_out, lse), (q, 'rows'), tiles.queries,
                    tiles, interpret, mask, rows)
  dk, dv = _call(_dkv_kernel, (q, k, v, d_out, lse, delta), (k, v), tiles.backward_keys,
                 tiles, interpret, mask, rows)
  d_bias = None
  if bias is not None:  # added to every row, padding tokens' too; k's changes nothing
    rows_sum = lambda g: jnp.sum(g.astype(jnp.float32), axis=(0, 1))
    d_bias = jnp.stack([rows_sum(dq), jnp.zeros(bias.shape[1:]), rows_sum(d_out)])
    d_bias = d_bias.astype(bias.dtype)
  return dq, dk, dv, d_bias


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
  return tuple(_Slot(kvq, i) for i in (2, 0, 1))


def _kvq_bias_rows(bias, like):
  """kvq's `[3, H, D]` bias (k, v, q) -> q's and v's `[H, Dp]` rows, as `_padded_bias`."""
  return None if bias is None else _padded_bias(bias[jnp.array([2, 0, 1])], like)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _attention_kvq(kvq, bias, mask, tiles, interpret):
  return _forward_kvq(kvq, bias, mask, tiles, interpret)[0]


def _forward_kvq(kvq, bias, mask, tiles, interpret):
  out = jax.ShapeDtypeStruct(kvq.shape[:2] + kvq.shape[3:], kvq.dtype)
  out, lse = _call(_forward_kernel, _qkv_slots(kvq), (out, 'rows'), tiles.queries, tiles,
                   interpret, mask, _kvq_bias_rows(bias, kvq))
  return out, (kvq, bias, out, lse)


def _backward_kvq(mask, tiles, interpret, residuals, d_out):
  kvq, bias, out, lse = residuals
  rows = _kvq_bias_rows(bias, kvq)
  grad = jax.ShapeDtypeStruct(kvq.shape, kvq.dtype)
  d_kvq, delta = _call(_dq_kernel, (*_qkv_slots(kvq), out, d_out, lse), (_Slot(grad, 2), 'rows'),
                       tiles.queries, tiles, interpret, mask, rows)
  (d_kvq,) = _call(_dkv_packed_kernel, (*_qkv_slots(kvq), d_out, lse, delta, _Slot(d_kvq, 0, 2)),
                   (_Slot(grad, 0, 2),), tiles.backward_keys, tiles, interpret, mask, rows,
                   alias_last_input=True)
  d_bias = None
  if bias is not None:  # as in _backward: k's is zero
    rows_sum = lambda g: jnp.sum(g.astype(jnp.float32), axis=(0, 1))
    d_bias = jnp.stack([jnp.zeros(bias.shape[1:]), rows_sum(d_out), rows_sum(d_kvq[:, :, 2])])
    d_bias = d_bias.astype(bias.dtype)
  return d_kvq, d_bias


_attention_kvq.defvjp(_forward_kvq, _backward_kvq)
