"""fused_mlp's two kernels for Hopper GPUs, written for Mosaic GPU (wgmma and TMA) instead
of Triton.

- forward: `x [M, D] @ w1 [D, F] + b1 [F]` -> `pre`, `gelu(pre)`, each `[M, F]`;
- backward: `dpre = (dy @ w2^T) * gelu'(pre)`, `dy [M, D]`, `w2 [F, D]`, `pre [M, F]` ->
  `[M, F]` (and the bias gradient, its column sums, by XLA).

Why a second version: on an H100 the Triton kernel's matmul runs at ~400 TFLOP/s where
cuBLAS reaches 757 (docs/benchmarks.md, session 13), so the fusion saves less than the
matmul loses; JAX's Mosaic GPU matmul for Hopper reached 675 TFLOP/s at this shape. The
layout is that matmul's: a persistent grid of one program per SM walking the output tiles;
in each program a memory warpgroup streams `[tile_m, tile_k]` and `[tile_k, 2 tile_n]` blocks
of the operands into shared memory through TMA while two compute warpgroups each accumulate a
`[tile_m, tile_n]` half with wgmma. The epilogue works in `[e, e]` sub-tiles, stored by TMA
from shared-memory slots: the forward adds the bias (its slice loaded once per tile, while
the tile's steps run) and writes `pre` and `gelu(pre)` through two alternating slots; the
backward reads the sub-tile of `pre` (by default the whole tile's `pre` is loaded by TMA
while the steps run; see MosaicTiles.prefetch) and writes the accumulator times the GELU
slope.

They compile for Hopper GPUs. `interpret=True` runs them in Pallas' Mosaic GPU interpreter
on any backend instead: it simulates the warpgroups, shared memory, TMA copies and barriers
(uninitialised memory reads as NaN), which is how the tests check their values on the CPU;
the tests also lower them for CUDA there (layout inference, the shared-memory budget), and
bench/gpu_mlp_kernels.py compares them with XLA's ops on the GPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from vision_core import gpu_target
from vision_core.fused_mlp import gelu_tanh_and_slope, pad_rows

_TWO_WARPGROUPS = 2  # compute warpgroups per program, side by side along N


@dataclasses.dataclass(frozen=True)
class MosaicTiles:
  """Tile shape of the Mosaic kernels: each compute warpgroup's `[tile_m, tile_n]`
  accumulator, `tile_k` deep steps, `stages` operand blocks in flight, `[epilogue,
  epilogue]` sub-tiles in the epilogue, and the order of the output tiles (`m_minor`: walk
  down M first, in bands `band` tiles wide).

  `prefetch`: the backward loads its whole `pre` tile while the tile's steps run, into one
  shared-memory slot per sub-tile, instead of one sub-tile at a time after them into two
  alternating slots. That hides the loads' latency but takes 32 KiB more shared memory: with
  128 x 128 tiles, room for 3 stages and not 4. (The forward always prefetches its bias
  slice, which is small.)"""
  tile_m: int = 128
  tile_n: int = 128
  tile_k: int = 64
  stages: int = 3  # 4 fits neither the forward (two outputs) nor the prefetching backward
  epilogue: int = 64
  m_minor: bool = True
  band: int = 8
  prefetch: bool = True


def fits(d: int, f: int, tiles: MosaicTiles) -> bool:
  """Whether `[M, d] @ [d, f]` tiles evenly (M is padded to `tile_m`). Epilogue sub-tiles
  keep the accumulator's layout, which needs rows in multiples of 64 (Mosaic GPU's layout
  inference refuses 32)."""
  return (f % (_TWO_WARPGROUPS * tiles.tile_n) == 0 and d % tiles.tile_k == 0
          and tiles.epilogue % 64 == 0
          and tiles.tile_m % tiles.epilogue == 0 and tiles.tile_n % tiles.epilogue == 0)


def _swizzled(minor: int, dtype):
  """TMA-friendly shared-memory transforms for blocks whose minor axis has `minor` items."""
  swizzle = plgpu.find_swizzle(minor * jnp.dtype(dtype).itemsize * 8)
  return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)),
          plgpu.SwizzleTransform(swizzle))


def _tiled_matmul(a_gmem, b_gmem, tiles: MosaicTiles, scratch: dict, prologue, epilogue):
  """Runs `a_gmem [M, K] @ b_gmem [K, N]` tile by tile. Before each output tile's steps
  `prologue(wg=, rows=, cols=, half=, **scratch refs)` may start copies that the steps
  then hide; after them `epilogue(acc, wg=, rows=, cols=, half=, **scratch refs)` gets the
  warpgroup's accumulator `[tile_m, tile_n]` (rows `rows` and columns `cols[half]` of the
  output) rounded to the operands' dtype: what XLA's matmul would write, in half the
  registers."""
  m, k = a_gmem.shape
  n = b_gmem.shape[1]
  t = tiles
  program_n = _TWO_WARPGROUPS * t.tile_n
  grid_m, grid_n = m // t.tile_m, n // program_n
  operand = _swizzled(t.tile_k, a_gmem.dtype)

  def pipeline(body, context):
    return plgpu.emit_pipeline_warp_specialized(
        body, grid=(k // t.tile_k,), memory_registers=40,
        in_specs=[plgpu.BlockSpec((t.tile_m, t.tile_k), lambda s: (0, s), transforms=operand,
                                  memory_space=plgpu.SMEM),
                  plgpu.BlockSpec((t.tile_k, program_n), lambda s: (s, 0),
                                  transforms=operand, memory_space=plgpu.SMEM)],
        wg_axis='wg', num_compute_wgs=_TWO_WARPGROUPS, max_concurrent_steps=t.stages,
        compute_context=context)

  unused = lambda *_, **__: None  # the allocations do not depend on the bodies
  @functools.partial(pl.run_scoped,
                     allocations=pipeline(unused, unused).get_allocations(a_gmem, b_gmem),
                     collective_axes='wg', **scratch)
  def _scope(allocations, **refs):
    wg = lax.axis_index('wg')

    @plgpu.nd_loop((grid_m * grid_n,), collective_axes='cluster_grid')
    def _output_tiles(loop):
      (index,) = loop.index
      row, col = plgpu.planar_snake(index, (grid_m, grid_n), 0 if t.m_minor else 1, t.band)
      rows = pl.ds(row * t.tile_m, t.tile_m)
      cols = pl.ds(col * program_n, program_n)
      half = pl.ds(wg * t.tile_n, t.tile_n)  # this warpgroup's columns of the program's

      def context(run_pipeline):
        @functools.partial(pl.run_scoped,
                           acc_ref=plgpu.ACC((t.tile_m, t.tile_n), jnp.float32))
        def _(acc_ref):
          where = dict(wg=wg, rows=rows, cols=cols, half=half)
          prologue(**where, **refs)
          run_pipeline(acc_ref)
          epilogue(acc_ref[...].astype(a_gmem.dtype), **where, **refs)

      def step(_, a_smem, b_smem, acc_ref):
        plgpu.wgmma(acc_ref, a_smem, b_smem.at[:, half])
        plgpu.wgmma_wait(0)
        return acc_ref

      pipeline(step, context)(a_gmem.at[rows, :], b_gmem.at[:, cols],
                              allocations=allocations)
  plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def _sub_tiles(tiles: MosaicTiles):
  """The epilogue's `[epilogue, epilogue]` sub-tiles of a warpgroup's `[tile_m, tile_n]`
  output, as (row slice, column slice)."""
  e = tiles.epilogue
  return [(slice(i * e, (i + 1) * e), slice(j * e, (j + 1) * e))
          for i in range(tiles.tile_m // e) for j in range(tiles.tile_n // e)]


def _in_output(gmem, rows, cols, half, sub):
  """The `[M, N]` array's part under sub-tile `sub` of the warpgroup's output tile."""
  return gmem.at[rows, cols].at[:, half].at[sub]


def _backward_kernel(a_gmem, b_gmem, pre_gmem, out_gmem, *, tiles: MosaicTiles):
  e = tiles.epilogue
  subs = _sub_tiles(tiles)
  # `pre` is loaded into a slot and `dpre` stored from it.
  slots = len(subs) if tiles.prefetch else 2

  def load(index, wg, rows, cols, half, smem, loaded):
    slot = index % slots
    plgpu.copy_gmem_to_smem(_in_output(pre_gmem, rows, cols, half, subs[index]),
                            smem.at[wg, slot], loaded.at[wg * slots + slot])

  def prologue(*, wg, rows, cols, half, smem, loaded):
    if tiles.prefetch:
      plgpu.wait_smem_to_gmem(0, wait_read_only=True)  # the last tile's stores read the slots
      for index in range(len(subs)):
        load(index, wg, rows, cols, half, smem, loaded)

  def epilogue(acc, *, wg, rows, cols, half, smem, loaded):
    for index, sub in enumerate(subs):
      slot = index % slots
      if not tiles.prefetch:
        plgpu.wait_smem_to_gmem(1, wait_read_only=True)  # the slot's last store has read it
        load(index, wg, rows, cols, half, smem, loaded)
      plgpu.barrier_wait(loaded.at[wg * slots + slot])
      _, slope = gelu_tanh_and_slope(smem[wg, slot].astype(jnp.float32))
      smem[wg, slot] = (acc[sub].astype(jnp.float32) * slope).astype(out_gmem.dtype)
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(smem.at[wg, slot], _in_output(out_gmem, rows, cols, half, sub))

  _tiled_matmul(a_gmem, b_gmem, tiles, dict(
      smem=plgpu.SMEM((_TWO_WARPGROUPS, slots, e, e), out_gmem.dtype,
                      transforms=_swizzled(e, out_gmem.dtype)),
      loaded=plgpu.Barrier(num_barriers=_TWO_WARPGROUPS * slots)), prologue, epilogue)


def _forward_kernel(a_gmem, b_gmem, bias_gmem, pre_gmem, h_gmem, *, tiles: MosaicTiles):
  e = tiles.epilogue
  dtype = pre_gmem.dtype

  def prologue(*, wg, cols, half, bias_smem, loaded, **_):
    # Arrives while the tile's steps run; the last tile's epilogue has read the slot.
    plgpu.copy_gmem_to_smem(bias_gmem.at[cols].at[half], bias_smem.at[wg], loaded.at[wg])

  def epilogue(acc, *, wg, rows, cols, half, smem, bias_smem, loaded):
    plgpu.barrier_wait(loaded.at[wg])
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
    for index, sub in enumerate(_sub_tiles(tiles)):
      slot = index % 2  # two alternating slots: one is stored while the next is computed
      bias = bias_smem[wg, sub[1]]
      pre = (acc[sub].astype(jnp.float32)
             + lax.broadcast_in_dim(bias.astype(jnp.float32), (e, e), [1]))
      pre = pre.astype(dtype)  # stored, and the GELU's input, as in fused_mlp
      h, _ = gelu_tanh_and_slope(pre.astype(jnp.float32))
      plgpu.wait_smem_to_gmem(1, wait_read_only=True)  # the slot's last stores have read it
      smem[wg, slot, 0] = pre
      smem[wg, slot, 1] = h.astype(dtype)
      plgpu.commit_smem()
      # The two stores are one group (committed by the second), as the waits count groups.
      plgpu.copy_smem_to_gmem(smem.at[wg, slot, 0], _in_output(pre_gmem, rows, cols, half, sub),
                              commit_group=False)
      plgpu.copy_smem_to_gmem(smem.at[wg, slot, 1], _in_output(h_gmem, rows, cols, half, sub))

  _tiled_matmul(a_gmem, b_gmem, tiles, dict(
      smem=plgpu.SMEM((_TWO_WARPGROUPS, 2, 2, e, e), dtype, transforms=_swizzled(e, dtype)),
      bias_smem=plgpu.SMEM((_TWO_WARPGROUPS, tiles.tile_n), bias_gmem.dtype),
      loaded=plgpu.Barrier(num_barriers=_TWO_WARPGROUPS)), prologue, epilogue)


def interpreter():
  """The `interpret=` value that runs a Mosaic GPU kernel in Pallas' interpreter. Its
  parameters are not public API yet (jax 0.10), hence the guarded import."""
  try:
    from jax._src.pallas.mosaic_gpu.interpret import params  # pylint: disable=g-import-not-at-top
  except ImportError as error:
    raise ValueError(f'this jax ({jax.__version__}) has no Mosaic GPU interpreter: run '
                     'fused_mlp_mosaic on a Hopper GPU, or fused_mlp.Tiles with '
                     'interpret=True.') from error
  return params.InterpretGPUParams()


def _call(kernel, out_shapes, tiles: MosaicTiles, num_sms: int | None, interpret: bool,
          *operands):
  if num_sms is None:
    # Interpreted: two programs, so each walks several output tiles as on a GPU.
    num_sms = 2 if interpret else gpu_target.sm_count()
  return plgpu.kernel(
      functools.partial(kernel, tiles=tiles), out_type=out_shapes,
      grid=(num_sms,), grid_names=('cluster_grid',), cluster=(1,), cluster_names=('cluster',),
      num_threads=_TWO_WARPGROUPS + 1, thread_name='wg',
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
      interpret=interpreter() if interpret else None)(*operands)


def dense_gelu(x, w1, b1, tiles: MosaicTiles, num_sms: int | None = None,
               interpret: bool = False):
  """`(pre = x @ w1 + b1, gelu(pre))`, each `[M, F]`, as fused_mlp.dense_gelu."""
  m = x.shape[0]
  x = pad_rows(x, tiles.tile_m)
  shape = jax.ShapeDtypeStruct((x.shape[0], w1.shape[1]), x.dtype)
  pre, h = _call(_forward_kernel, (shape, shape), tiles, num_sms, interpret, x, w1,
                 b1.astype(x.dtype))
  return pre[:m], h[:m]


def gelu_input_grad(dy, w2, pre, tiles: MosaicTiles, num_sms: int | None = None,
                    interpret: bool = False):
  """`(dpre = (dy @ w2^T) * gelu'(pre) [M, F], its float32 column sums [F])`, as
  fused_mlp.gelu_input_grad. `num_sms`: programs in the persistent grid (default: the
  device's multiprocessors; 2 when interpreted)."""
  m = dy.shape[0]
  # Padded rows have dy = 0, so dpre is 0 there.
  dy, pre = pad_rows(dy, tiles.tile_m), pad_rows(pre, tiles.tile_m)
  shape = jax.ShapeDtypeStruct((dy.shape[0], w2.shape[0]), dy.dtype)
  dpre = _call(_backward_kernel, shape, tiles, num_sms, interpret, dy, w2.T, pre)[:m]
  return dpre, jnp.sum(dpre.astype(jnp.float32), axis=0)
