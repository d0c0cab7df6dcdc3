"""Latent-optimisation speed: our compiled search vs the study's PyTorch eager loop.

    python bench/gan_latent_search.py --steps 50
    python bench/gan_latent_search.py --steps 10 --batches 1,8 --latent 512 \
        --depths 512,512,512,512,256,128,64,32    # the study's generator (celebAHQ-512)

Both sides run the same Progressive-GAN generator architecture with the same weights
(checked: outputs agree), the study's optimiser (SGD lr 1, momentum 0.9, reduce-on-plateau
factor 0.1 patience 10 on the loss) and MSE in [-1, 1], for the same number of steps on
the same batch of target images. PyTorch: a Python loop of forward/backward/step (eager,
as in the study; its ReduceLROnPlateau is stepped on the batch loss). Ours:
`gan_jax.latent_search` with R=1 and early stopping off (so the step counts are equal),
timed after compilation (compile time reported separately), run as `gan_jax.compress` runs
it: on a CPU one device per core (`mesh.one_cpu_device_per_core`), the batch sharded over
them (one image: one device); the "one device" column is the same search unsharded.
`--one-device` leaves the CPU as one device (the earlier runs' setting). `--xla-defaults`
also times ours compiled with XLA's default options (`compiler_options={}`) instead of the
ones the search picks (`vision_core.xla_options`), alternating with it: the gain of that
choice, measured in the same run. `--rounds N` alternates ours and PyTorch N times per
batch size and reports medians (and the range of the per-round speed-ups), so a drift in
the machine's speed during the run hits both sides alike. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import jax
import numpy as np
import torch

from gan_jax import generators, latent_search
from vision_core import mesh as mesh_lib


def torch_gnet(params, config, device='cpu'):
  """A PyTorch PGAN generator (NCHW) computing the same function as ours on `params`."""
  p = jax.tree.map(lambda v: torch.from_numpy(np.asarray(v).copy()).to(device), params)
  act = lambda x: torch.nn.functional.leaky_relu(x, 0.2)
  norm = lambda x: x * torch.rsqrt(torch.mean(x * x, dim=1, keepdim=True) + 1e-8)
  d0 = config['depth_scale0']

  def conv(x, layer):
    w = p[layer]['kernel'].permute(3, 2, 0, 1)  # HWIO -> OIHW
    k, cin = w.shape[-1], w.shape[1]
    return (torch.nn.functional.conv2d(x, w, p[layer]['bias'], padding=k // 2)
            * math.sqrt(2.0 / (cin * k * k)))

  def forward(z):
    x = norm(z)
    x = (x @ p['formatLayer']['kernel'] + p['formatLayer']['bias']) * math.sqrt(2.0 / z.shape[1])
    x = norm(act(x).view(z.shape[0], d0, 4, 4))
    x = norm(act(conv(x, 'groupScale0_0')))
    for s in range(len(config['depth_other_scales'])):
      x = torch.nn.functional.interpolate(x, scale_factor=2, mode='nearest')
      for j in range(2):
        x = norm(act(conv(x, f'scaleLayers_{s}_{j}')))
    return conv(x, f'toRGBLayers_{len(config["depth_other_scales"])}')
  return forward


def torch_search(forward, targets_nchw, z0, steps):
  z = z0.clone().requires_grad_(True)
  opt = torch.optim.SGD([z], lr=1.0, momentum=0.9)
  sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.1, patience=10)
  for _ in range(steps):
    opt.zero_grad()
    per_image = ((forward(z) - targets_nchw) ** 2).mean(dim=(1, 2, 3))
    loss = per_image.sum()  # Sum of per-image MSEs: each image gets its own gradient.
    loss.backward()
    opt.step()
    sched.step(loss.item())
  return per_image.detach()


def alternate(first, second, rounds: int):
  """Runs `first()` and `second()` in turn, `rounds` times, so that a drift in the machine's
  speed hits both alike: `((first's last result, second's), (first's seconds, second's))`.
  JAX results are waited for before the clock stops."""
  results, seconds = [None, None], ([], [])
  for _ in range(rounds):
    for i, fn in enumerate((first, second)):
      t = time.perf_counter()
      results[i] = jax.block_until_ready(fn())
      seconds[i].append(time.perf_counter() - t)
  return tuple(results), seconds


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--steps', type=int, default=50)
  parser.add_argument('--batches', default='1,8,32')
  parser.add_argument('--latent', type=int, default=128)
  parser.add_argument('--depths', default='128,128,64,32', help='depthScale0 then others')
  parser.add_argument('--out', default=None)
  parser.add_argument('--one-device', action='store_true',
                      help='keep the CPU as one JAX device (no per-core split)')
  parser.add_argument('--rounds', type=int, default=1,
                      help='alternate ours and PyTorch this many times per batch (medians)')
  parser.add_argument('--xla-defaults', type=int, default=0, metavar='REPEATS',
                      help='also time ours with XLA default options, alternating with the '
                      'chosen ones REPEATS times (medians reported)')
  args = parser.parse_args()
  if not args.one_device:
    mesh_lib.one_cpu_device_per_core()  # Before JAX starts, as gan_jax.compress does.
  devices = jax.device_count()
  depths = [int(d) for d in args.depths.split(',')]
  config = {'family': 'pgan', 'dim_latent': args.latent, 'depth_scale0': depths[0],
            'depth_other_scales': depths[1:]}
  params = generators.init_params(config, seed=0)
  gen = generators.make(config, params)
  forward = torch_gnet(gen.params, config)
  z_check = np.random.default_rng(0).standard_normal((2, args.latent)).astype(np.float32)
  with torch.no_grad():
    ref = forward(torch.from_numpy(z_check)).numpy().transpose(0, 2, 3, 1)
  diff = float(np.abs(ref - np.asarray(gen.generate(z_check))).max())
  assert diff < 1e-3, f'torch and jax generators differ by {diff}'
  rows = []
  for batch in map(int, args.batches.split(',')):
    targets = np.asarray(gen.generate(np.random.default_rng(1).standard_normal(
        (batch, args.latent)).astype(np.float32)))
    cfg = latent_search.SearchConfig(steps=args.steps, restarts=1, optimizer='sgd',
                                     stop_patience=0)
    ids = latent_search.image_ids(targets)

    def compiled(mesh, options=None):
      search = latent_search.make_latent_search(gen.apply, latent_dim=args.latent, config=cfg,
                                                mesh=mesh, compiler_options=options)
      t = time.perf_counter()
      jax.block_until_ready(search(gen.params, targets, ids))
      return search, time.perf_counter() - t

    def timed(search):
      t = time.perf_counter()
      result = jax.block_until_ready(search(gen.params, targets, ids))
      return result, time.perf_counter() - t
    sharded = devices > 1 and batch > 1 and batch % devices == 0
    mesh = mesh_lib.make_mesh() if sharded else None
    search, compile_s = compiled(mesh)
    defaults = {}
    if args.xla_defaults:
      plain = compiled(mesh, {})[0]
      chosen_s, plain_s = alternate(lambda: search(gen.params, targets, ids),
                                    lambda: plain(gen.params, targets, ids),
                                    args.xla_defaults)[1]
      defaults = {'jax_chosen_options_median_steps_per_s': args.steps / np.median(chosen_s),
                  'jax_xla_defaults_median_steps_per_s': args.steps / np.median(plain_s)}
    z0 = torch.from_numpy(np.array(latent_search.initial_latents(
        jax.random.PRNGKey(0), ids, 1, args.latent))[:, 0])
    targets_t = torch.from_numpy(targets.transpose(0, 3, 1, 2).copy())
    torch_search(forward, targets_t, z0, 2)  # Warm-up.
    # The times are the medians of the rounds, the speed-up range that of the rounds' ratios.
    (result, torch_loss), (jax_times, torch_times) = alternate(
        lambda: search(gen.params, targets, ids),
        lambda: torch_search(forward, targets_t, z0, args.steps), args.rounds)
    jax_s, torch_s = float(np.median(jax_times)), float(np.median(torch_times))
    one_device_s = timed(compiled(None)[0])[1] if sharded else jax_s
    ratios = [b / a for a, b in zip(jax_times, torch_times)]
    rows.append({'batch': batch, 'steps': args.steps, 'jax_devices': devices if sharded else 1,
                 'rounds': args.rounds, 'jax_times_s': jax_times, 'torch_times_s': torch_times,
                 'speedup_min': min(ratios), 'speedup_max': max(ratios),
                 'jax_s': jax_s, 'jax_one_device_s': one_device_s, 'jax_compile_s': compile_s,
                 'torch_s': torch_s, 'jax_steps_per_s': args.steps / jax_s,
                 'jax_one_device_steps_per_s': args.steps / one_device_s,
                 'torch_steps_per_s': args.steps / torch_s,
                 'jax_image_steps_per_s': batch * args.steps / jax_s,
                 'torch_image_steps_per_s': batch * args.steps / torch_s,
                 'speedup': torch_s / jax_s,
                 # The loss at the last step, before its update, on both sides (ours'
                 # `result.loss` also scores that update, so it is one step further).
                 'jax_last_step_loss': float(np.mean(np.asarray(result.curves)[-1])),
                 'torch_last_step_loss': float(torch_loss.mean()), **defaults})
    print(json.dumps(rows[-1]), flush=True)
  side = 4 * 2 ** (len(depths) - 1)
  print(f'\nPGAN generator {side}x{side}, latent {args.latent}, depths {depths}; '
        f'{args.steps} steps; jax {jax.__version__} ({devices} CPU devices), torch '
        f'{torch.__version__} ({torch.get_num_threads()} threads)\n')
  if args.rounds > 1:
    print(f'Medians of {args.rounds} alternating rounds; the speed-up range is the rounds\'.\n')
  print('| images | ours: steps/s (devices) | ours, one device: steps/s | ours: image-steps/s | '
        'PyTorch eager: steps/s | PyTorch: image-steps/s | speed-up | compile (s) |')
  print('|---|---|---|---|---|---|---|---|')
  num = lambda x: f'{x:.0f}' if x >= 100 else f'{x:.3g}'  # 3 significant digits or more
  for r in rows:
    spread = (f' ({r["speedup_min"]:.2f}-{r["speedup_max"]:.2f})' if args.rounds > 1 else '')
    print(f'| {r["batch"]} | {num(r["jax_steps_per_s"])} ({r["jax_devices"]}) | '
          f'{num(r["jax_one_device_steps_per_s"])} | {num(r["jax_image_steps_per_s"])} | '
          f'{num(r["torch_steps_per_s"])} | {num(r["torch_image_steps_per_s"])} | '
          f'{r["speedup"]:.2f}x{spread} | {r["jax_compile_s"]:.1f} |')
  print('\nMean loss at the last step, ours vs PyTorch: ' + ', '.join(
      f'{r["batch"]} images {r["jax_last_step_loss"]:.5f} vs {r["torch_last_step_loss"]:.5f}'
      for r in rows) + '.')
  if args.xla_defaults:
    print(f'\nOurs with the options the search picks against XLA defaults, alternating, '
          f'median of {args.xla_defaults}:\n')
    print('| images | chosen options: steps/s | XLA defaults: steps/s | gain |')
    print('|---|---|---|---|')
    for r in rows:
      a, b = r['jax_chosen_options_median_steps_per_s'], r['jax_xla_defaults_median_steps_per_s']
      print(f'| {r["batch"]} | {a:.1f} | {b:.1f} | {a / b:.2f}x |')
  if args.out:
    with open(args.out, 'w') as f:
      json.dump(rows, f, indent=2)


if __name__ == '__main__':
  main()
