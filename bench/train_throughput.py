"""Train-step throughput: our jit-compiled ViT step vs a PyTorch eager ViT, in one run.

  python bench/train_throughput.py

Same architecture on both sides (ViT: 32x32x3 input, patch 4 -> 64 tokens + class token,
width 192, depth 6, 3 heads, MLP 768, tanh GELU, pre-LayerNorm eps 1e-6, 10 classes), same
batch (128), same recipe (AdamW lr 1e-3, weight decay 1e-4 on matrices only, global
grad-norm clip 1.0, softmax cross entropy), float32 weights and compute. Inputs are one fixed
random batch already in memory, so only the train step is timed (forward, backward, update).
Reports the median seconds per step over `--steps` steps after `--warmup` steps, images/s,
and the ratio ours / PyTorch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DIM, DEPTH, HEADS, MLP, PATCH, SIZE, CLASSES = 192, 6, 3, 768, 4, 32, 10


def batch_arrays(batch: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(-1, 1, (batch, SIZE, SIZE, 3)).astype(np.float32)
  labels = rng.integers(0, CLASSES, batch).astype(np.int32)
  return images, labels


def time_steps(step, warmup: int, steps: int) -> tuple[list[float], list[float]]:
  """Wall-clock and process CPU seconds of each step after `warmup` steps.

  CPU time (all threads) is reported too: on a shared machine it is far less disturbed by
  other jobs than wall time, and the ratio of the two shows how well both cores are used.
  """
  for _ in range(warmup):
    step()
  times, cpu = [], []
  for _ in range(steps):
    start, start_cpu = time.perf_counter(), time.process_time()
    step()
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
  return times, cpu


def compiled_train_step(model, images: np.ndarray, labels: np.ndarray, num_classes: int):
  """Our train step (`vit_jax.train`, one device; AdamW lr 1e-3, weight decay 1e-4, clip 1.0)
  compiled for `model` on one batch already on the device: `(step, compile_s)`, where
  `step()` runs one step on that batch (state donated and carried) and returns its loss;
  `step.hlo_text()` is the compiled program's optimised HLO."""
  import jax  # pylint: disable=g-import-not-at-top
  from vision_core import mesh as mesh_lib, optim  # pylint: disable=g-import-not-at-top
  from vit_jax import train  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh((1, 1), jax.devices()[:1])
  schedule = optim.make_schedule(base_lr=1e-3, total_steps=10_000, decay_type='constant')
  tx = optim.make_optimizer(name='adamw', schedule=schedule, grad_norm_clip=1.0,
                            weight_decay=1e-4)
  state, shardings = train.create_train_state(model=model, tx=tx, image_shape=images.shape[1:],
                                              mesh=mesh)
  step_fn = train.make_train_step(model=model, tx=tx, schedule=schedule, mesh=mesh,
                                  state_shardings=shardings, num_classes=num_classes)
  data = mesh_lib.shard_batch({'image': images, 'label': labels}, mesh)
  compile_start = time.perf_counter()
  compiled = step_fn.lower(state, data).compile()
  compile_s = time.perf_counter() - compile_start
  holder = {'state': state}

  def step():
    holder['state'], metrics = compiled(holder['state'], data)
    return metrics['loss']
  step.hlo_text = compiled.as_text  # for profiles: the optimised HLO, on demand
  return step, compile_s


def bench_model(dtype: str = 'float32', patch_embedding: str = 'conv'):
  """Our ViT of the benchmark's architecture (the module docstring), `dtype` compute."""
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax import models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import models  # pylint: disable=g-import-not-at-top
  config = models.vit_config('bench', 'Ti', PATCH, dropout_rate=0.0)
  config.transformer.num_layers = DEPTH
  return models_vit.VisionTransformer(
      num_classes=CLASSES, dtype={'float32': jax.numpy.float32,
                                  'bfloat16': jax.numpy.bfloat16}[dtype],
      patch_embedding=patch_embedding, **config)


def bench_jax(batch: int, warmup: int, steps: int, dtype: str,
              patch_embedding: str = 'conv') -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  train_step, compile_s = compiled_train_step(bench_model(dtype, patch_embedding),
                                              *batch_arrays(batch), CLASSES)

  def step():
    train_step().block_until_ready()
  times, cpu = time_steps(step, warmup, steps)
  return {'impl': f'jax {jax.__version__} jit {dtype} (vit_jax.train)'
                  + ('' if patch_embedding == 'conv' else f', {patch_embedding} patches'),
          'compile_s': compile_s,
          'step_s': statistics.median(times), 'cpu_s': statistics.median(cpu), 'times': times}


def bench_torch(batch: int, warmup: int, steps: int, threads: int | None) -> dict:
  import torch  # pylint: disable=g-import-not-at-top
  from torch import nn  # pylint: disable=g-import-not-at-top
  import torch.nn.functional as F  # pylint: disable=g-import-not-at-top
  if threads:
    torch.set_num_threads(threads)
  torch.manual_seed(0)

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.norm1, self.norm2 = nn.LayerNorm(DIM, eps=1e-6), nn.LayerNorm(DIM, eps=1e-6)
      self.qkv, self.proj = nn.Linear(DIM, 3 * DIM), nn.Linear(DIM, DIM)
      self.fc1, self.fc2 = nn.Linear(DIM, MLP), nn.Linear(MLP, DIM)

    def forward(self, x):
      b, n, d = x.shape
      q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, HEADS, d // HEADS).permute(2, 0, 3, 1, 4)
      y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
      x = x + self.proj(y)
      # tanh GELU, as ours (the official ViT's form).
      return x + self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate='tanh'))

  class ViT(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Conv2d(3, DIM, PATCH, PATCH)
      self.cls = nn.Parameter(torch.zeros(1, 1, DIM))
      self.pos = nn.Parameter(torch.randn(1, (SIZE // PATCH) ** 2 + 1, DIM) * 0.02)
      self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
      self.norm, self.head = nn.LayerNorm(DIM, eps=1e-6), nn.Linear(DIM, CLASSES)

    def forward(self, images):  # NCHW
      x = self.embed(images).flatten(2).transpose(1, 2)
      x = torch.cat([self.cls.expand(len(x), -1, -1), x], 1) + self.pos
      return self.head(self.norm(self.blocks(x))[:, 0])

  model = ViT()
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 1e-4},
                           {'params': no_decay, 'weight_decay': 0.0}], lr=1e-3)
  images, labels = batch_arrays(batch)
  x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
  y = torch.from_numpy(labels).long()

  def step():
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    loss.item()
  times, cpu = time_steps(step, warmup, steps)
  return {'impl': f'torch {torch.__version__} eager fp32, {torch.get_num_threads()} threads',
          'step_s': statistics.median(times), 'cpu_s': statistics.median(cpu), 'times': times}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--torch-threads', type=int, nargs='+', default=[2, 1],
                      help='PyTorch is timed at each; the fastest is the peer')
  parser.add_argument('--only', choices=['jax', 'torch'])
  parser.add_argument('--patch-embedding', nargs='+', default=['conv'],
                      choices=['conv', 'matmul'],
                      help="ours with VisionTransformer(patch_embedding=...), each; the "
                           "first is compared with PyTorch")
  parser.add_argument('--json', help='also write the results here')
  args = parser.parse_args()
  results, other_ours = [], []
  if args.only != 'torch':
    ours = [bench_jax(args.batch, args.warmup, args.steps, args.dtype, p)
            for p in args.patch_embedding]
    results.append(ours[0])
    other_ours = ours[1:]
    for other in other_ours:
      print(f'  (ours, {other["impl"].split(", ")[-1]}: {other["step_s"] * 1000:.1f} ms/step)')
  if args.only != 'jax':
    peers = [bench_torch(args.batch, args.warmup, args.steps, t) for t in args.torch_threads]
    for peer in peers:
      print(f'  (PyTorch with {peer["impl"].split(", ")[-1]}: {peer["step_s"] * 1000:.1f} ms/step)')
    results.append(min(peers, key=lambda r: r['step_s']))
  for r in results:
    r['img_per_s'] = args.batch / r['step_s']
    print(f'{r["impl"]:<48} {r["step_s"] * 1000:8.1f} ms/step  {r["img_per_s"]:7.1f} img/s  '
          f'CPU {r["cpu_s"] * 1000:8.1f} ms/step'
          + (f'  (compile {r["compile_s"]:.1f} s)' if 'compile_s' in r else ''))
  if len(results) == 2:
    print('PyTorch peer = its fastest thread count above.')
    ratio = results[0]['img_per_s'] / results[1]['img_per_s']
    cpu_ratio = results[1]['cpu_s'] / results[0]['cpu_s']
    print(f'ratio ours / PyTorch eager: {ratio:.2f}x wall-clock throughput, '
          f'{cpu_ratio:.2f}x CPU time per step')
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump({'machine': platform.processor() or platform.machine(), 'args': vars(args),
                 'results': results, 'other_ours': other_ours}, f, indent=2)


if __name__ == '__main__':
  main()
