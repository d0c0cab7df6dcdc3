"""vision_core.flash_attention's Pallas kernels (Triton on NVIDIA GPUs; `interpret=True`
anywhere) and `call`, which runs one over a (tile of N, batch, head) grid on each device's
shard. The kernels see one head's rows: `[N, Dp]` blocks of q, k, v, O, dO and their
gradients, `[N]` row statistics. The API, the gradients' wiring and the tile settings
(`Tiles`) are in vision_core.flash_attention.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from vision_core import pallas_sharding

_LOG2E = math.log2(math.e)
_MASKED = -1e30  # a score no key reaches; exp2 of it minus any real score is 0


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


def forward_kernel(q_ref, k_ref, v_ref, *refs, tokens, valid_keys, causal, depth, tiles,
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


def dq_kernel(q_ref, k_ref, v_ref, *refs, tokens, valid_keys, causal, depth, tiles, biased):
  """With biases, also each tile's column sums of dq and dO (the q and v biases' gradients:
  both are added to every row), so that XLA does not read dq and dO again to sum them."""
  (qb, vb), (o_ref, do_ref, lse_ref, dq_ref, delta_ref, *sum_refs) = _load_biases(refs, biased)

  def program(start, bq):
    rows, rows_ok, (q, do, o) = _tiles(start, bq, tokens, depth, q_ref, do_ref, o_ref,
                                       biases=(qb,))
    o = o.astype(jnp.float32)
    if vb is not None:  # dO.(O - b_v): the dot products below use v without its bias
      o = o - vb[None, :].astype(jnp.float32)
    delta = jnp.sum(o * do.astype(jnp.float32), axis=1)  # [bq]
    lse = plgpu.load(lse_ref.at[pl.ds(start, bq)], mask=rows_ok, other=0.0)
    if sum_refs:  # rows past N are zero in dO (and dq, below): they add nothing
      sum_refs[1][...] = jnp.sum(do.astype(jnp.float32), axis=0)

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
    if sum_refs:
      sum_refs[0][...] = jnp.sum(dq, axis=0)

  _each_program(program, tokens, tiles.queries, tiles.min_tail)


def dkv_kernel(q_ref, k_ref, v_ref, *refs, tokens, valid_keys, causal, depth, tiles, biased):
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


def dkv_packed_kernel(*refs, **settings):
  """dkv_kernel writing k's and v's gradients into one `[N, 2, Dp]` block of the packed
  gradient. The input before it is that gradient's buffer (aliased, not read)."""
  *refs, _, d_kv_ref = refs
  dkv_kernel(*refs, (d_kv_ref, 0), (d_kv_ref, 1), **settings)


@dataclasses.dataclass(frozen=True)
class Slot:
  """Part of a packed `[B, N, 3, H, D]` array (attention_kvq's): `size` slots (1 or 2) from
  `index * size` on axis 2. A block of two slots is one ref `[N, 2, Dp]` in the kernel."""
  array: jax.Array | jax.ShapeDtypeStruct
  index: int
  size: int = 1


@dataclasses.dataclass(frozen=True)
class TileSums:
  """A float32 `[B, programs, H, Dp]` result: one `[Dp]` row per program (`call`'s
  'tile_sums')."""
  array: jax.ShapeDtypeStruct


def _array(x):
  return x.array if isinstance(x, (Slot, TileSums)) else x


def call(kernel, inputs, outputs, rows_per_program, tiles, interpret, mask, bias, *,
         alias_last_input=False):
  """`kernel` over a (tile of N, batch, head) grid, on each device's shard of the batch and
  heads (vision_core.pallas_sharding). `inputs`: q, k, v, then other `[B, N, H, D]` arrays
  (whole rows of one head per program; D padded to a power of two in the block) or
  `[B, H, N]` row statistics; any of the `[B, N, H, D]` ones may be `Slot`s of a packed
  array. `outputs`: arrays (or shapes) like those, `Slot`s, 'rows' for float32 row
  statistics, or 'tile_sums' (`TileSums`). `mask`: `(valid_keys, causal)`. `bias`: None or
  q's and v's `[H, Dp]` biases, passed after q, k, v (one `[Dp]` row per program).
  `alias_last_input`: the last input is the buffer of output 0 (written in place)."""
  if bias is not None:
    inputs = (*inputs[:3], *bias, *inputs[3:])
  arrays = [_array(x) for x in inputs]
  first = arrays[0]
  heads_axis = first.ndim - 2
  batch, tokens, heads = first.shape[0], first.shape[1], first.shape[heads_axis]
  programs, depth_block = pl.cdiv(tokens, rows_per_program), pl.next_power_of_2(first.shape[-1])
  shapes = {'rows': jax.ShapeDtypeStruct((batch, heads, tokens), jnp.float32),
            'tile_sums': TileSums(jax.ShapeDtypeStruct((batch, programs, heads, depth_block),
                                                       jnp.float32))}
  outputs = [shapes[o] if isinstance(o, str) else o for o in outputs]

  def local(o, batch, heads):  # a result's shape on one device
    shape = list(_array(o).shape)
    shape[0], shape[-2 if len(shape) > 3 else 1] = batch, heads
    struct = jax.ShapeDtypeStruct(tuple(shape), _array(o).dtype)
    return dataclasses.replace(o, array=struct) if isinstance(o, (Slot, TileSums)) else struct

  def run(*shards):
    slots = [dataclasses.replace(x, array=a) if isinstance(x, Slot) else a
             for x, a in zip(inputs, shards)]
    batch, heads = shards[0].shape[0], shards[0].shape[heads_axis]
    return _pallas_call(kernel, slots, [local(o, batch, heads) for o in outputs],
                        rows_per_program, tiles, interpret, mask, bias is not None,
                        alias_last_input)

  roles = lambda x: _ROLES[len(_array(x).shape)]
  return pallas_sharding.sharded(run, [roles(x) for x in inputs],
                                 [roles(o) for o in outputs])(*arrays)


# Which axes follow the batch ('b') and the heads ('h'), by rank: packed [B, N, 3, H, D],
# [B, N, H, D] (and tile sums [B, programs, H, Dp]), row statistics [B, H, N], biases
# [H, Dp].
_ROLES = {5: 'b..h.', 4: 'b.h.', 3: 'bh.', 2: 'h.'}


def _pallas_call(kernel, inputs, outputs, rows_per_program, tiles, interpret, mask, biased,
                 alias_last_input):
  """`call`'s kernel on one device's arrays (biases already among `inputs`; 'rows' and
  'tile_sums' outputs already shapes)."""
  first = _array(inputs[0])
  batch, tokens, heads, depth = (first.shape[:2] + first.shape[3:] if first.ndim == 5
                                 else first.shape)
  depth_block = pl.next_power_of_2(depth)

  def spec(x):
    if isinstance(x, TileSums):  # program i's row
      return pl.BlockSpec((None, None, None, depth_block), lambda i, b, h: (b, i, h, 0))
    if isinstance(x, Slot):
      slots = None if x.size == 1 else x.size
      return pl.BlockSpec((None, tokens, slots, None, depth_block),
                          lambda _, b, h: (b, 0, x.index, h, 0))
    if len(x.shape) == 4:
      return pl.BlockSpec((None, tokens, None, depth_block), lambda _, b, h: (b, 0, h, 0))
    if len(x.shape) == 2:  # a bias
      return pl.BlockSpec((None, depth_block), lambda _, b, h: (h, 0))
    return pl.BlockSpec((None, None, tokens), lambda _, b, h: (b, h, 0))

  body = functools.partial(kernel, tokens=tokens, depth=depth, tiles=tiles,
                           valid_keys=mask[0], causal=mask[1], biased=biased)
  return pl.pallas_call(
      body,
      grid=(pl.cdiv(tokens, rows_per_program), batch, heads),
      in_specs=[spec(x) for x in inputs],
      out_specs=[spec(o) for o in outputs],
      out_shape=[_array(o) for o in outputs],
      input_output_aliases={len(inputs) - 1: 0} if alias_last_input else {},
      compiler_params=plgpu.CompilerParams(num_warps=tiles.num_warps,
                                           num_stages=tiles.num_stages),
      interpret=interpret,
      # 'flash_attention_forward' etc.: bench/profile_train_step.py classes it as attention.
      name='flash_attention_' + kernel.__name__.strip('_').removesuffix('_kernel'))(
          *[_array(x) for x in inputs])
