"""fused_mlp's backward kernel for Hopper GPUs, written for Mosaic GPU (wgmma and TMA)
instead of Triton.

`dpre = (dy @ w2^T) * gelu'(pre)`, `dy [M, D]`, `w2 [F, D]`, `pre [M, F]` -> `[M, F]`.

Why a second version: on an H100 the Triton kernel's matmul runs at ~400 TFLOP/s where
cuBLAS reaches 757 (docs/benchmarks.md, session 13), so the fusion saves less than the
matmul loses; JAX's Mosaic GPU matmul for Hopper reached 675 TFLOP/s at this shape. The
layout is that matmul's: a persistent grid of one program per SM walking the output tiles;
in each program a memory warpgroup streams `[tile_m, tile_k]` and `[tile_k, 2 tile_n]` blocks
of the operands into shared memory through TMA while two compute warpgroups each accumulate a
`[tile_m, tile_n]` half with wgmma. The epilogue, per `[e, e]` sub-tile, loads that sub-tile
of `pre` by TMA, multiplies the accumulator by the GELU slope and stores `dpre` by TMA.
The bias gradient (the column sums of `dpre`) is left to XLA.

Mosaic GPU kernels run on Hopper GPUs only (no interpreter for this kernel's warp
specialisation); the tests lower it for CUDA on the CPU, and bench/gpu_mlp_kernels.py checks
its values against XLA's on the GPU.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu

from vision_core.fused_mlp import gelu_tanh_and_slope

_TWO_WARPGROUPS = 2  # compute warpgroups per program, side by side along N


@dataclasses.dataclass(frozen=True)
class MosaicTiles:
  """Tile shape of the Mosaic kernel: each compute warpgroup's `[tile_m, tile_n]`
  accumulator, `tile_k` deep steps, `stages` operand blocks in flight, `[epilogue,
  epilogue]` sub-tiles in the epilogue, and the order of the output tiles (`m_minor`: walk
  down M first, in bands `band` tiles wide)."""
  tile_m: int = 128
  tile_n: int = 128
  tile_k: int = 64
  stages: int = 4
  epilogue: int = 64
  m_minor: bool = True
  band: int = 8


def fits(d: int, f: int, tiles: MosaicTiles) -> bool:
  """Whether `[M, d] @ [d, f]` tiles evenly (M is padded to `tile_m`)."""
  return (f % (_TWO_WARPGROUPS * tiles.tile_n) == 0 and d % tiles.tile_k == 0
          and tiles.tile_m % tiles.epilogue == 0 and tiles.tile_n % tiles.epilogue == 0)


def _swizzled(minor: int, dtype):
  """TMA-friendly shared-memory transforms for blocks whose minor axis has `minor` items."""
  swizzle = plgpu.find_swizzle(minor * jnp.dtype(dtype).itemsize * 8)
  return (plgpu.TilingTransform((8, swizzle // jnp.dtype(dtype).itemsize)),
          plgpu.SwizzleTransform(swizzle))


def _kernel(a_gmem, b_gmem, pre_gmem, out_gmem, *, tiles: MosaicTiles):
  m, k = a_gmem.shape
  n = b_gmem.shape[1]
  t, e = tiles, tiles.epilogue
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
  @functools.partial(
      pl.run_scoped,
      allocations=pipeline(unused, unused).get_allocations(a_gmem, b_gmem),
      # Two sub-tile slots per warpgroup: one is stored while the next is computed.
      epilogue_smem=plgpu.SMEM((_TWO_WARPGROUPS, 2, e, e), out_gmem.dtype,
                               transforms=_swizzled(e, out_gmem.dtype)),
      loaded=plgpu.Barrier(num_barriers=_TWO_WARPGROUPS * 2),
      collective_axes='wg')
  def _scope(allocations, epilogue_smem, loaded):
    wg = lax.axis_index('wg')

    @plgpu.nd_loop((grid_m * grid_n,), collective_axes='cluster_grid')
    def _output_tiles(loop):
      (index,) = loop.index
      row, col = plgpu.planar_snake(index, (grid_m, grid_n), 0 if t.m_minor else 1, t.band)
      rows = pl.ds(row * t.tile_m, t.tile_m)
      cols = pl.ds(col * program_n, program_n)
      half = pl.ds(wg * t.tile_n, t.tile_n)  # this warpgroup's columns of the program's

      def epilogue(run_pipeline):
        @functools.partial(pl.run_scoped,
                           acc_ref=plgpu.ACC((t.tile_m, t.tile_n), jnp.float32))
        def _(acc_ref):
          run_pipeline(acc_ref)
          acc = acc_ref[...]
          plgpu.wait_smem_to_gmem(0, wait_read_only=True)
          count = 0
          for i in range(t.tile_m // e):
            for j in range(t.tile_n // e):
              slot, count = count % 2, count + 1
              sub = (slice(i * e, (i + 1) * e), slice(j * e, (j + 1) * e))
              plgpu.wait_smem_to_gmem(1, wait_read_only=True)  # the slot's last store read
              barrier = loaded.at[wg * 2 + slot]
              plgpu.copy_gmem_to_smem(pre_gmem.at[rows, cols].at[:, half].at[sub],
                                      epilogue_smem.at[wg, slot], barrier)
              plgpu.barrier_wait(barrier)
              _, slope = gelu_tanh_and_slope(epilogue_smem[wg, slot].astype(jnp.float32))
              epilogue_smem[wg, slot] = (acc[sub] * slope).astype(out_gmem.dtype)
              plgpu.commit_smem()
              plgpu.copy_smem_to_gmem(epilogue_smem.at[wg, slot],
                                      out_gmem.at[rows, cols].at[:, half].at[sub])

      def step(_, a_smem, b_smem, acc_ref):
        plgpu.wgmma(acc_ref, a_smem, b_smem.at[:, half])
        plgpu.wgmma_wait(0)
        return acc_ref

      pipeline(step, epilogue)(a_gmem.at[rows, :], b_gmem.at[:, cols],
                               allocations=allocations)
  plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def gelu_input_grad(dy, w2, pre, tiles: MosaicTiles, num_sms: int | None = None):
  """`(dpre = (dy @ w2^T) * gelu'(pre) [M, F], its float32 column sums [F])`, as
  fused_mlp.gelu_input_grad. `num_sms`: programs in the persistent grid (default: the
  device's multiprocessors)."""
  m = dy.shape[0]
  pad = -m % tiles.tile_m
  if pad:  # padded rows have dy = 0, so dpre is 0 there
    dy = jnp.pad(dy, ((0, pad), (0, 0)))
    pre = jnp.pad(pre, ((0, pad), (0, 0)))
  if num_sms is None:
    num_sms = jax.devices()[0].core_count
  call = plgpu.kernel(
      functools.partial(_kernel, tiles=tiles),
      out_shape=jax.ShapeDtypeStruct((m + pad, w2.shape[0]), dy.dtype),
      grid=(num_sms,), grid_names=('cluster_grid',), cluster=(1,), cluster_names=('cluster',),
      num_threads=_TWO_WARPGROUPS + 1, thread_name='wg',
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Warpgroup))
  dpre = call(dy, w2.T, pre)[:m]
  return dpre, jnp.sum(dpre.astype(jnp.float32), axis=0)
