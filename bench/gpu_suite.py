"""The GPU goals of the issues, measured in one run on a lent H100/H200, each beside its peer.

  python bench/gpu_suite.py --out gpu_results.jsonl            # all sections, about 5 min
  python bench/gpu_suite.py --sections vit_train --quick       # smoke test (CPU is fine)

Sections (each its own try: one failing does not stop the others; one JSON line each):
- env: device, versions, and a bf16 8192^3 matmul as the measured peak.
- vit_train: ViT-B/16 at 224 px, bf16 compute (float32 parameters), AdamW with clipping,
  through `vit_jax.train.make_train_step`, for each --attention (default 'einsum' and 'cudnn';
  'pallas' is vision_core.flash_attention's Triton kernels): img/s and model
  FLOPs utilisation against the datasheet's dense bf16 peak (989 TFLOP/s, H100/H200 SXM) and
  the measured matmul peak. Peer: timm's vit_base_patch16_224, PyTorch eager, bf16 autocast,
  fused AdamW, same batch.
- pgan_inversion: latent search on the PGAN celebAHQ-512 architecture (latent 512, depths
  512,512,512,512,256,128,64,32; random weights: speed does not depend on them) at batch 32,
  SGD lr 1 momentum 0.9 with reduce-on-plateau, the study's recipe: seconds per image for
  1,000 steps. Peer: the study's PyTorch eager loop on the same generator and weights.
- vit_profile: where the vit_train step's time goes on the device (jax.profiler, kernels
  charged to HLO ops, see bench/profile_train_step.py); with --profile-dir, the optimised HLO
  and the per-op / per-kernel milliseconds are written there.
- vit_score: ViT-B/16 ViT-Score pairs/s (top-k, weighted and cosine in one pass).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DATASHEET_BF16_FLOPS = 989.4e12  # dense bf16, H100 SXM and H200 SXM datasheets
VIT_CLASSES = 1000  # the ViT sections' head (ImageNet-sized)
VIT_BATCH = 256
# --quick is a smoke test that must be quick on a CPU too: on a shared 2-core CPU, ViT-Ti at
# 64 px took 6.4 s per step at batch 256 (218 s for vit_train) and 0.37 s at 8 (65 s, 38 s
# of it compiling).
QUICK_VIT_BATCH = 8


def vit_forward_macs(*, image: int, patch: int, width: int, depth: int, mlp: int,
                     classes: int, last_block_queries: int | None = None) -> int:
  """Multiply-accumulates of one image's ViT forward pass (matmuls and convolutions only).

  `last_block_queries=1`: the last block computes only the class token (what our model does
  for classifier='token'); None: every token, the conventional count (17.56 G for B/16).
  """
  tokens = (image // patch) ** 2 + 1
  embed = (tokens - 1) * patch * patch * 3 * width
  block = tokens * 4 * width * width + 2 * tokens * tokens * width + 2 * tokens * width * mlp
  total = embed + (depth - 1) * block + width * classes
  q = tokens if last_block_queries is None else last_block_queries
  total += (tokens * 2 * width * width + q * 2 * width * width  # k, v for all; q, out for q
            + 2 * q * tokens * width + 2 * q * width * mlp)
  return total


def section_env(args) -> dict:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import flax  # pylint: disable=g-import-not-at-top
  info = {'jax': jax.__version__, 'flax': flax.__version__, 'backend': jax.default_backend(),
          'devices': [str(d) for d in jax.devices()],
          'device_kind': jax.devices()[0].device_kind,
          'xla_flags': os.environ.get('XLA_FLAGS', '')}
  try:
    info['nvidia_smi'] = subprocess.run(
        ['nvidia-smi', '--query-gpu=name,memory.total,driver_version,clocks.max.sm',
         '--format=csv,noheader'], capture_output=True, text=True, timeout=20).stdout.strip()
  except (OSError, subprocess.SubprocessError) as e:
    info['nvidia_smi'] = f'unavailable: {e}'
  n = 1024 if args.quick else 8192
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.bfloat16)
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  reps = 2 if args.quick else 20
  t = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  info['matmul_bf16_tflops'] = 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12
  return info


def time_loop(step, warmup: int, steps: int, sync) -> float:
  """Seconds per step: `steps` dispatched back to back after `warmup`, synced at the end."""
  for _ in range(warmup):
    out = step()
  sync(out)
  t = time.perf_counter()
  for _ in range(steps):
    out = step()
  sync(out)
  return (time.perf_counter() - t) / steps


def parse_flash_tiles(text: str):
  """`--flash-tiles`' 'queries,keys,backward_keys,backward_queries[,warps,stages,min_tail]' ->
  vision_core.flash_attention.Tiles."""
  from vision_core import flash_attention  # pylint: disable=g-import-not-at-top
  return flash_attention.Tiles(*map(int, text.split(',')))


def _vit_setup(args):
  """ViT-B/16 at 224 px (ViT-Ti/16 at 64 px with --quick): `(name, image, config, images,
  labels, make_model)`, one random batch of `--vit-batch` and `make_model(attention)` building
  the bf16-compute model with 1,000 classes."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vit_jax import layers, models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import models  # pylint: disable=g-import-not-at-top
  name, image = ('ViT-Ti_16', 64) if args.quick else ('ViT-B_16', 224)
  config = models.get_model_config(name)
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (args.vit_batch, image, image, 3)).astype(np.float32)
  labels = rng.integers(0, VIT_CLASSES, args.vit_batch).astype(np.int32)

  if args.flash_tiles:  # attention='pallas': read when the model is traced
    from vision_core import flash_attention  # pylint: disable=g-import-not-at-top
    flash_attention.TILES = parse_flash_tiles(args.flash_tiles)
  # attention='pallas': q, k, v from three matmuls instead of one packed (read when traced).
  layers.PALLAS_PACKED_QKV = not args.flash_unpacked
  if args.norm_tiles:  # norm_impl='pallas': read when the model is traced
    from vision_core import fused_norm  # pylint: disable=g-import-not-at-top
    fused_norm.TILES = fused_norm.NormTiles(*(int(v) for v in args.norm_tiles.split(',')))
  tiles = None
  if args.mlp_tiles:
    from bench.gpu_mlp_kernels import parse_tile_pair  # pylint: disable=g-import-not-at-top
    tiles = parse_tile_pair(args.mlp_tiles)

  def make_model(attention):
    return models_vit.VisionTransformer(num_classes=VIT_CLASSES, dtype=jnp.bfloat16,
                                        attention=attention,
                                        token_multiple=args.token_multiple,
                                        mlp_impl=args.mlp_impl, mlp_tiles=tiles,
                                        patch_embedding=args.patch_embedding,
                                        norm_impl=args.norm_impl, **config)
  return name, image, config, images, labels, make_model


def section_vit_train(args) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  from bench.train_throughput import compiled_train_step  # pylint: disable=g-import-not-at-top
  name, image, config, images, labels, make_model = _vit_setup(args)
  batch, classes = args.vit_batch, VIT_CLASSES
  dims = dict(image=image, patch=16, width=config.hidden_size,
              depth=config.transformer.num_layers, mlp=config.transformer.mlp_dim,
              classes=classes)
  flops_std = 6 * vit_forward_macs(**dims)  # forward 2 * MACs, backward twice the forward
  flops_run = 6 * vit_forward_macs(**dims, last_block_queries=1)
  rows = []
  for attention in [] if args.peer_only else args.attention:
    row = {'section': 'vit_train', 'impl': f'ours jax {jax.__version__}, attention={attention}',
           'model': name, 'image': image, 'batch': batch, 'token_multiple': args.token_multiple,
           'mlp_impl': args.mlp_impl, 'mlp_tiles': args.mlp_tiles,
           'patch_embedding': args.patch_embedding, 'flash_tiles': args.flash_tiles,
           'flash_unpacked': args.flash_unpacked, 'norm_impl': args.norm_impl,
           'norm_tiles': args.norm_tiles, 'xla_flags': os.environ.get('XLA_FLAGS', '')}
    try:
      step, row['compile_s'] = compiled_train_step(make_model(attention), images, labels,
                                                   classes)
      sec = time_loop(step, 3, args.steps, lambda x: x.block_until_ready())
      row.update(step_s=sec, img_per_s=batch / sec,
                 model_tflops=flops_std * batch / sec / 1e12,
                 mfu_datasheet=flops_std * batch / sec / DATASHEET_BF16_FLOPS,
                 executed_tflops=flops_run * batch / sec / 1e12)
      del step
    except Exception as e:  # pylint: disable=broad-except
      row['error'] = f'{type(e).__name__}: {e}'[:2000]
    print(json.dumps(row), flush=True)
    rows.append(row)
  if args.quick or args.no_peer:
    return rows
  row = {'section': 'vit_train', 'model': name, 'image': image, 'batch': batch}
  try:
    import timm  # pylint: disable=g-import-not-at-top
    import torch  # pylint: disable=g-import-not-at-top
    row['impl'] = (f'timm {timm.__version__} vit_base_patch16_224, torch {torch.__version__} '
                   'eager, bf16 autocast, fused AdamW')
    net = timm.create_model('vit_base_patch16_224', num_classes=classes).cuda()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4, fused=True)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().cuda()
    y = torch.from_numpy(labels).long().cuda()

    def torch_step():
      opt.zero_grad(set_to_none=True)
      with torch.autocast('cuda', dtype=torch.bfloat16):
        loss = torch.nn.functional.cross_entropy(net(x), y)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
      opt.step()
      return loss
    sec = time_loop(torch_step, 5, args.steps, lambda _: torch.cuda.synchronize())
    row.update(step_s=sec, img_per_s=batch / sec, model_tflops=flops_std * batch / sec / 1e12,
               mfu_datasheet=flops_std * batch / sec / DATASHEET_BF16_FLOPS)
    del net, opt
    torch.cuda.empty_cache()
  except Exception as e:  # pylint: disable=broad-except
    row['error'] = f'{type(e).__name__}: {e}'[:2000]
  print(json.dumps(row), flush=True)
  rows.append(row)
  return rows


def section_vit_profile(args) -> dict:
  import collections  # pylint: disable=g-import-not-at-top
  from bench.profile_train_step import report, trace_op_times  # pylint: disable=g-import-not-at-top
  from bench.train_throughput import compiled_train_step  # pylint: disable=g-import-not-at-top
  name, _, _, images, labels, make_model = _vit_setup(args)
  attention = args.attention[-1]
  step, _ = compiled_train_step(make_model(attention), images, labels, VIT_CLASSES)
  time_loop(step, 3, 3, lambda x: x.block_until_ready())
  kernels = collections.Counter()
  per_op, per_kind, device = trace_op_times(step, 3, kernels)
  hlo = step.hlo_text()
  lines = report(per_op, per_kind, hlo, 40)
  lines.append('most expensive kernels:')
  lines += [f'  {ms:8.2f} ms  {kernel[:150]}' for kernel, ms in kernels.most_common(40)]
  print('\n'.join(lines), flush=True)
  if args.profile_dir:
    os.makedirs(args.profile_dir, exist_ok=True)
    stem = os.path.join(args.profile_dir, f'{name}_{attention}_b{args.vit_batch}')
    with gzip.open(stem + '.hlo.txt.gz', 'wt', encoding='utf-8') as f:
      f.write(hlo)
    with open(stem + '.ops.json', 'w', encoding='utf-8') as f:
      json.dump({'per_op_ms': dict(per_op.most_common()),
                 'per_kernel_ms': dict(kernels.most_common())}, f)
  return {'model': name, 'attention': attention, 'batch': args.vit_batch, 'device': device,
          'op_ms_per_step': sum(per_kind.values()),
          'per_kind_ms': {k: round(v, 3) for k, v in per_kind.most_common()}}


def section_pgan_inversion(args) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  from gan_jax import generators, latent_search  # pylint: disable=g-import-not-at-top
  if args.quick:
    config = {'family': 'pgan', 'dim_latent': 64, 'depth_scale0': 32,
              'depth_other_scales': [32, 16]}
  else:
    config = {'family': 'pgan', 'dim_latent': 512, 'depth_scale0': 512,
              'depth_other_scales': [512, 512, 512, 256, 128, 64, 32]}
  side = 4 * 2 ** len(config['depth_other_scales'])
  batch, latent = args.pgan_batch, config['dim_latent']
  gen = generators.make(config, generators.init_params(config, seed=0))
  z = np.random.default_rng(1).standard_normal((batch, latent)).astype(np.float32)
  targets = np.asarray(gen.generate(z))
  rows = []
  base = {'section': 'pgan_inversion', 'side': side, 'batch': batch,
          'depths': [config['depth_scale0']] + config['depth_other_scales']}

  def ours(steps):
    cfg = latent_search.SearchConfig(steps=steps, restarts=1, optimizer='sgd',
                                     stop_patience=0, loop='while')
    search = latent_search.make_latent_search(gen.apply, latent_dim=latent, config=cfg)
    t = time.perf_counter()
    ids = latent_search.image_ids(targets)
    compiled = search.lower(gen.params, targets, ids).compile()
    compile_s = time.perf_counter() - t
    t = time.perf_counter()
    result = jax.block_until_ready(compiled(gen.params, targets, ids))
    return time.perf_counter() - t, compile_s, float(np.mean(result.loss))

  row = dict(base, impl=f'ours jax {jax.__version__} (one while_loop program)')
  try:
    probe_steps = 10 if args.quick else 50
    sec, compile_s, _ = ours(probe_steps)
    row.update(probe_steps=probe_steps, probe_s=sec, compile_s=compile_s)
    steps = 1000 if (sec / probe_steps * 1000 < args.pgan_full_limit_s and not args.quick) \
        else probe_steps
    if steps != probe_steps:
      sec, _, loss = ours(steps)
      row['final_loss'] = loss
    row.update(steps=steps, seconds=sec,
               s_per_image_1000_steps=sec / steps * 1000 / batch,
               image_steps_per_s=batch * steps / sec)
  except Exception as e:  # pylint: disable=broad-except
    row['error'] = f'{type(e).__name__}: {traceback.format_exc()}'[-2000:]
  print(json.dumps(row), flush=True)
  rows.append(row)
  if args.quick:
    return rows
  row = dict(base)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from bench.gan_latent_search import torch_gnet, torch_search  # pylint: disable=g-import-not-at-top
    row['impl'] = f'PyTorch {torch.__version__} eager loop (the study\'s)'
    forward = torch_gnet(gen.params, config, device='cuda')
    z0 = torch.from_numpy(np.asarray(latent_search.initial_latents(
        jax.random.PRNGKey(0), latent_search.image_ids(targets), 1, latent))[:, 0]).cuda()
    targets_t = torch.from_numpy(targets.transpose(0, 3, 1, 2).copy()).cuda()
    with torch.no_grad():
      ref = forward(torch.from_numpy(z[:2]).cuda()).cpu().numpy().transpose(0, 2, 3, 1)
    row['max_abs_diff_vs_ours'] = float(np.abs(ref - targets[:2]).max())
    torch_search(forward, targets_t, z0, 3)
    torch.cuda.synchronize()
    steps = 30
    t = time.perf_counter()
    torch_search(forward, targets_t, z0, steps)
    torch.cuda.synchronize()
    sec = time.perf_counter() - t
    row.update(steps=steps, seconds=sec, s_per_image_1000_steps=sec / steps * 1000 / batch,
               image_steps_per_s=batch * steps / sec)
  except Exception as e:  # pylint: disable=broad-except
    row['error'] = f'{type(e).__name__}: {traceback.format_exc()}'[-2000:]
  print(json.dumps(row), flush=True)
  rows.append(row)
  return rows


def section_vit_score(args) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from vit_jax import models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.configs.models import get_model_config  # pylint: disable=g-import-not-at-top
  from vit_jax.metrics.vit_score import vit_scores  # pylint: disable=g-import-not-at-top
  name, image = ('ViT-Ti_16', 64) if args.quick else ('ViT-B_16', 224)
  pairs, batch = (8, 4) if args.quick else (1024, 128)
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (pairs, image, image, 3), dtype=np.uint8)
  b = np.clip(a.astype(np.int16) + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
  rows = []
  for dtype in ('float32', 'bfloat16'):
    row = {'section': 'vit_score', 'model': name, 'image': image, 'pairs': pairs,
           'batch': batch, 'dtype': dtype}
    try:
      model = models_vit.VisionTransformer(num_classes=1000, dtype=getattr(jnp, dtype),
                                           **get_model_config(name))
      params = dict(jax.jit(model.init)(jax.random.PRNGKey(0),
                                        jnp.zeros((1, image, image, 3)))['params'])
      params['head'] = {'kernel': jax.random.normal(jax.random.PRNGKey(1),
                                                    (params['head']['kernel'].shape)) * 0.02,
                        'bias': jnp.zeros(1000)}
      vit_scores(a[:batch], b[:batch], model, params, k=100, batch_size=batch)  # compile
      t = time.perf_counter()
      vit_scores(a, b, model, params, k=100, batch_size=batch)
      sec = time.perf_counter() - t
      row.update(seconds=sec, pairs_per_s=pairs / sec)
    except Exception as e:  # pylint: disable=broad-except
      row['error'] = f'{type(e).__name__}: {e}'[:2000]
    print(json.dumps(row), flush=True)
    rows.append(row)
  return rows


SECTIONS = {'env': section_env, 'vit_train': section_vit_train,
            'vit_profile': section_vit_profile,
            'pgan_inversion': section_pgan_inversion, 'vit_score': section_vit_score}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--sections', nargs='+', default=list(SECTIONS), choices=list(SECTIONS))
  parser.add_argument('--out', help='append one JSON line per result here')
  parser.add_argument('--quick', action='store_true', help='tiny sizes: a smoke test')
  parser.add_argument('--steps', type=int, default=20, help='timed ViT train steps')
  parser.add_argument('--vit-batch', type=int,
                      help=f'ViT sections: images per step (default {VIT_BATCH}; '
                      f'{QUICK_VIT_BATCH} with --quick)')
  parser.add_argument('--attention', nargs='+', default=['einsum', 'cudnn'])
  parser.add_argument('--token-multiple', type=int, default=None,
                      help="VisionTransformer(token_multiple=): pad the token stream to a "
                      "multiple of this (default: the model's, 8 for attention='cudnn'; 1 "
                      'pads q/k/v in every layer instead)')
  parser.add_argument('--mlp-impl', default='xla', help='VisionTransformer(mlp_impl=)')
  parser.add_argument('--patch-embedding', default='conv',
                      help='VisionTransformer(patch_embedding=): conv or matmul')
  parser.add_argument('--norm-impl', default='xla',
                      help='VisionTransformer(norm_impl=): xla, pallas or pallas_interpret')
  parser.add_argument('--norm-tiles', help="norm_impl='pallas': vision_core.fused_norm."
                      'NormTiles as rows,num_warps (default 8,4)')
  parser.add_argument('--mlp-tiles', help='fused MLP tiles, FORWARD/BACKWARD, each as '
                      "bench/gpu_mlp_kernels.parse_tiles reads it ('xla', 'bm,bn,bk,warps,"
                      "stages' or 'mosaic:...'; gpu_mlp_kernels.py --best writes them)")
  parser.add_argument('--flash-tiles', help="attention='pallas': vision_core.flash_attention."
                      'Tiles as comma-separated fields (queries,keys,backward_keys,'
                      'backward_queries[,num_warps,num_stages,min_tail]; default '
                      '64,64,64,64,4,3,16)')
  parser.add_argument('--flash-unpacked', action='store_true',
                      help="attention='pallas': q, k, v from three matmuls "
                      '(flash_attention.attention), not one packed (attention_kvq)')
  parser.add_argument('--profile-dir', help='vit_profile: write HLO and op times here')
  parser.add_argument('--no-peer', action='store_true', help='skip the PyTorch ViT peer')
  parser.add_argument('--peer-only', action='store_true',
                      help='vit_train: only the PyTorch peer (its own process: all the memory)')
  parser.add_argument('--pgan-batch', type=int, default=32)
  parser.add_argument('--pgan-full-limit-s', type=float, default=150.0,
                      help='run the full 1,000 steps only if the probe predicts less')
  args = parser.parse_args(argv)
  if args.vit_batch is None:
    args.vit_batch = QUICK_VIT_BATCH if args.quick else VIT_BATCH
  return args


def main():
  args = parse_args()
  start = time.perf_counter()
  for name in args.sections:
    t = time.perf_counter()
    try:
      result = SECTIONS[name](args)
    except Exception:  # pylint: disable=broad-except
      result = {'section': name, 'error': traceback.format_exc()[-3000:]}
    results = result if isinstance(result, list) else [dict(result, section=name)]
    if name == 'env':
      print(json.dumps(results[0]), flush=True)
    print(f'# {name}: {time.perf_counter() - t:.1f} s (total {time.perf_counter() - start:.1f} s)',
          flush=True)
    if args.out:
      with open(args.out, 'a', encoding='utf-8') as f:
        for r in results:
          f.write(json.dumps(r) + '\n')


if __name__ == '__main__':
  main()
