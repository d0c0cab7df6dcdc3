"""Where a latent-search step goes, ours and the PyTorch eager loop's, against the CPU's peak.

    python bench/gan_step_breakdown.py [--batch 32] [--steps 50]

The same generator, optimiser and targets as bench/gan_latent_search.py. Ours: a
`jax.profiler` trace of `gan_jax.latent_search` run as the CLI runs it (one device per core,
the batch sharded), op times split into YNNPACK fusions (the convolutions and the dense
layer) and the rest. PyTorch: a `torch.profiler` trace of the study's loop, split into
convolutions (forward and backward) and the rest (elementwise ops, autograd, the
optimiser, Python). Wall times are unprofiled, the medians of 3 rounds alternating the two
sides (`gan_latent_search.alternate`). The convolution work is counted from the
architecture, per image and step (forward + input gradient; neither side computes weight
gradients): PyTorch upsamples then convolves (36 multiply-adds per 2x2 output pixels and
channel pair), ours folds the upsample into the convolution (16;
`models_pgan.upscale2d_conv3x3`). The peak is a
`[2048, 2048]` float32 matmul per core, all cores at once. The last line bounds the
speed-up: PyTorch's step time over the time our convolutions would take at that peak with
nothing else. Run it with the default one JAX device per core (no `JAX_NUM_CPU_DEVICES`):
the per-core columns divide by the device count.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bench.gan_latent_search import alternate, torch_gnet, torch_search  # noqa: E402
from bench.profile_train_step import trace_op_times  # noqa: E402
from gan_jax import generators, latent_search  # noqa: E402
from vision_core import mesh as mesh_lib  # noqa: E402


def generator_macs(config, folded_upsample: bool) -> int:
  """Multiply-adds of one image's PGAN forward pass (dense, convolutions, toRGB)."""
  d0, side, cin = config['depth_scale0'], 4, config['depth_scale0']
  macs = config['dim_latent'] * 16 * d0 + 16 * 9 * d0 * d0
  for depth in config['depth_other_scales']:
    side *= 2
    macs += side * side * (4 if folded_upsample else 9) * cin * depth  # upsampling conv
    macs += side * side * 9 * depth * depth
    cin = depth
  return macs + side * side * cin * 3


def matmul_peak_gflops(repeats: int = 20) -> float:
  """Best float32 GFLOP/s per core of `[2048, 2048]` matmuls, one on each JAX CPU device (one
  per core) at once: the cores' peak when all are busy, as in the search."""
  devices = jax.devices()
  mesh = jax.sharding.Mesh(np.array(devices), ('data',))
  x = jax.device_put(
      np.random.default_rng(0).standard_normal((len(devices), 2048, 2048), np.float32),
      jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data')))
  f = jax.jit(lambda a: a @ a)
  jax.block_until_ready(f(x))
  best = np.inf
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(x))
    best = min(best, time.perf_counter() - t)
  return 2 * 2048 ** 3 / best / 1e9


def torch_conv_seconds(forward, targets, z0, steps: int) -> float:
  """Convolution seconds per step of the study's loop, from a profiled run."""
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    torch_search(forward, targets, z0, steps)
  # Top-level convolution ops only (their children, e.g. mkldnn_convolution, are inside).
  conv_us = sum(e.cpu_time_total for e in prof.key_averages()
                if e.key in ('aten::convolution', 'aten::convolution_backward'))
  return conv_us / 1e6 / steps


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--latent', type=int, default=128)
  parser.add_argument('--depths', default='128,128,64,32', help='depthScale0 then others')
  args = parser.parse_args()
  mesh_lib.one_cpu_device_per_core()
  cores = jax.device_count()
  if args.batch % cores:
    # Unsharded, one device's ops spread over every core and the per-core split is unknown.
    parser.error(f'--batch {args.batch}: expected a multiple of the {cores} cores.')
  depths = [int(d) for d in args.depths.split(',')]
  config = {'family': 'pgan', 'dim_latent': args.latent, 'depth_scale0': depths[0],
            'depth_other_scales': depths[1:]}
  gen = generators.make(config, generators.init_params(config, seed=0))
  rng = np.random.default_rng(1)
  targets = np.asarray(gen.generate(rng.standard_normal((args.batch, args.latent),
                                                         np.float32)))
  ids = latent_search.image_ids(targets)
  cfg = latent_search.SearchConfig(steps=args.steps, restarts=1, optimizer='sgd',
                                   stop_patience=0)
  search = latent_search.make_latent_search(gen.apply, latent_dim=args.latent, config=cfg,
                                            mesh=mesh_lib.make_mesh())
  run = lambda: search(gen.params, targets, ids)
  forward = torch_gnet(gen.params, config)
  z0 = torch.from_numpy(np.array(latent_search.initial_latents(
      jax.random.PRNGKey(0), ids, 1, args.latent))[:, 0])
  targets_t = torch.from_numpy(targets.transpose(0, 3, 1, 2).copy())
  run_torch = lambda: torch_search(forward, targets_t, z0, args.steps)
  jax.block_until_ready(run())  # Compiles.
  torch_search(forward, targets_t, z0, 2)  # Warm-up.
  # Wall times unprofiled: medians of 3 rounds, alternating the two sides.
  ours_times, torch_times = alternate(run, run_torch, 3)[1]
  ours_wall, torch_wall = (float(np.median(t)) / args.steps for t in (ours_times, torch_times))
  per_op, _, _ = trace_op_times(run, 3)
  # Op times summed over the worker threads, per step, shared out over the cores.
  ours_ynn = sum(ms for n, ms in per_op.items() if n.startswith('ynn_')) / args.steps / cores
  ours_rest = sum(ms for n, ms in per_op.items()
                  if not n.startswith('ynn_')) / args.steps / cores
  torch_conv = torch_conv_seconds(forward, targets_t, z0, args.steps)
  peak = matmul_peak_gflops()

  step_gflop = lambda folded: 2 * 2 * generator_macs(config, folded) * args.batch / 1e9
  ours_gflop, torch_gflop = step_gflop(True), step_gflop(False)
  at_peak = ours_gflop / (peak * cores)  # seconds per step, every core busy at peak
  print(f'PGAN {4 * 2 ** (len(depths) - 1)} px, depths {depths}, {args.batch} images, '
        f'{args.steps} steps; {cores} cores; jax {jax.__version__}, torch {torch.__version__} '
        f'({torch.get_num_threads()} threads)\n')
  print(f'One core\'s float32 matmul peak: {peak:.0f} GFLOP/s. Convolution work per step: '
        f'ours {ours_gflop:.2f} GFLOP, PyTorch {torch_gflop:.2f} GFLOP.\n')
  print('| side | ms/step (wall) | convolutions: ms/step per core | their GFLOP/s per core '
        '| rest: ms/step per core |')
  print('|---|---|---|---|---|')
  # The search ends by scoring its last update: one more forward pass (half a step's work).
  ours_rate = ours_gflop * (1 + 0.5 / args.steps) / cores / ours_ynn * 1e3
  print(f'| ours ({cores} devices) | {1e3 * ours_wall:.2f} | {ours_ynn:.2f} | '
        f'{ours_rate:.0f} | {ours_rest:.2f} |')
  # PyTorch's ops run on all its intra-op threads at once: wall time is per core already.
  print(f'| PyTorch eager | {1e3 * torch_wall:.2f} | {1e3 * torch_conv:.2f} | '
        f'{torch_gflop / cores / torch_conv:.0f} | {1e3 * (torch_wall - torch_conv):.2f} |')
  print(f'\nSpeed-up {torch_wall / ours_wall:.2f}x; bound, ours as convolutions at the peak '
        f'only ({1e3 * at_peak:.2f} ms/step): {torch_wall / at_peak:.2f}x.')


if __name__ == '__main__':
  main()
