"""Compiles the GPU candidates for an H100 on this machine, no GPU needed: does each compile,
and what do our kernels cost in registers, spills and shared memory.

  pip install --target /opt/cuda-jax "jax-cuda12-plugin[with-cuda]==$(python -c \\
      'import jax; print(jax.__version__)')"                     # ~5 GB, once
  PYTHONPATH=/opt/cuda-jax python bench/gpu_aot_check.py --out aot.jsonl     # ~3 min

Sections (vision_core.gpu_target does the compile-only part; one JSON line per check):
- kernels: vision_core.flash_attention at ViT-B/16's shapes (q, k, v packed as
  [512, 197, 3, 12, 64] bf16, or for the first tiles also three [512, 197, 12, 64]; biases
  added in the kernels; forward and gradients) for each --flash-tiles; fused_mlp's
  forward and backward kernels ([102400, 768] x [768, 3072]) for each of
  bench/gpu_mlp_kernels.py's CANDIDATES.
- vit: the ViT-B/16 train step (batch 512, bf16) of each variant of bench/gpu_vit_variants.sh.
- igpt: Image GPT's loss gradients (bf16, 1024 tokens, --igpt-batch) for --igpt-sizes, with
  einsum and with flash attention: the memory the [B, H, T, T] weights take.
Each: compile seconds, the program's temporary memory, its thunks by kind (kernel launches,
library calls, copies) and, for each of our kernels (flash_attention_*, mlp_gemm_*): grid,
threads and shared memory (XLA's thunk list), registers and spilled bytes (ptxas -v on the
PTX XLA wrote), its warpgroup matmul instructions (`wgmma`) and older `mma.sync` ones
(Triton's choice for tiles under 64 rows), and how many programs one SM holds at once (the
least of what threads, registers and shared memory allow). For the ViT also how many
arrays hold the token stream in another axis order than `[B, N, D]` (a batch-minor layout
of XLA's choosing, as in session 18's slow patch_matmul), and the GB that XLA's own
memory-bound passes (not matmuls, not custom calls) read and write per step.
XLA does not autotune here (that needs the GPU): its GEMMs get default Triton tilings
instead of the cuBLAS/Triton choices a GPU's autotuning makes, so thunk counts and memory
are indicative and times must come from the GPU. Mosaic GPU kernels are only lowered:
their compile runs when a GPU loads the program.
"""

from __future__ import annotations

import argparse
import collections
import functools
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# pylint: disable=wrong-import-position
import jax
import jax.numpy as jnp

from bench.gpu_mlp_kernels import CANDIDATES, parse_tile_pair, parse_tiles
from bench.gpu_suite import parse_flash_tiles
from vision_core import gpu_target
from vision_core.errors import cli_errors
# pylint: enable=wrong-import-position

OUR_KERNELS = re.compile(r'flash_attention_\w+|mlp_gemm_\w+|layer_norm_\w+')
# Hopper, per SM: the limits a program's residency is the least of. Registers go to warps
# in blocks of 256; a block reserves 1 KiB of shared memory for the system.
SM_THREADS, SM_REGISTERS, SM_BLOCKS = 2048, 65536, 32
SM_SHARED = gpu_target.TARGETS['h100']['shared_memory_per_core']  # the H200's too
# bench/gpu_vit_variants.sh's variants: gpu_suite flags as VisionTransformer arguments.
_FLASH = dict(attention='pallas', token_multiple=1)
_FUSED_MLP = dict(mlp_impl='pallas', mlp_tiles=f'{CANDIDATES[0]}/{CANDIDATES[0]}')
VARIANTS = {
    'ours': {},
    'flash': dict(_FLASH, flash_tiles='64,64,64,64,4,3'),
    'flash_s2': dict(_FLASH, flash_tiles='64,64,64,64,4,2'),
    'flash_unpacked': dict(_FLASH, flash_tiles='64,64,64,64,4,3', flash_unpacked=True),
    'fused_mlp': _FUSED_MLP,
    'patch_matmul': dict(patch_embedding='matmul'),
    'fused_norm': dict(norm_impl='pallas'),
    'all': dict(_FLASH, flash_tiles='64,64,64,64,4,3', patch_embedding='matmul',
                norm_impl='pallas', **_FUSED_MLP),
}


def blocks_per_sm(threads: int, registers: int, shared: int) -> int:
  """Programs one Hopper SM holds at once: `threads` per program, `registers` per thread,
  `shared` bytes of shared memory per program."""
  warps = -(-threads // 32)
  per_warp = -(-registers * 32 // 256) * 256
  limits = [SM_THREADS // threads, SM_BLOCKS,
            SM_REGISTERS // (per_warp * warps) if registers else SM_BLOCKS,
            SM_SHARED // (shared + 1024)]
  return max(0, min(limits))


def parse_thunks(text: str) -> tuple[dict[str, int], dict[str, dict]]:
  """XLA's `*.thunk_sequence.txt` -> ({thunk kind: count}, {our kernel: grid, threads,
  shared memory}). Kinds: kCustomKernel (XLA's fusions, Triton GEMMs and ours),
  kCublasLtMatmul, kConvolution, kCopy, ..."""
  kinds = collections.Counter(re.findall(r'^\s*\d+: (k\w+)', text, re.M))
  ours = {}
  for m in re.finditer(r'(\S+) grid: \[([\d, ]+)\] threads: \[([\d, ]+)\]\s+'
                       r'shared_memory: (\d+) bytes', text):
    if OUR_KERNELS.fullmatch(m.group(1)):
      ours[m.group(1)] = {'grid': [int(v) for v in m.group(2).split(',')],
                          'threads': math.prod(int(v) for v in m.group(3).split(',')),
                          'shared_bytes': int(m.group(4))}
  return dict(kinds), ours


def parse_ptxas(text: str) -> dict[str, dict]:
  """`ptxas -v` output -> {kernel: registers, spill_store_bytes, spill_load_bytes}."""
  out = {}
  for m in re.finditer(r"Function properties for (\S+)\n\s*(\d+) bytes stack frame, (\d+) "
                       r"bytes spill stores, (\d+) bytes spill loads\n.*?Used (\d+) registers",
                       text, re.S):
    out[m.group(1)] = {'registers': int(m.group(5)), 'spill_store_bytes': int(m.group(3)),
                       'spill_load_bytes': int(m.group(4))}
  return out


def _ptxas() -> str | None:
  try:
    from nvidia import cuda_nvcc  # pylint: disable=g-import-not-at-top
    path = os.path.join(list(cuda_nvcc.__path__)[0], 'bin', 'ptxas')
    return path if os.path.exists(path) else None
  except ImportError:
    return None


def permuted_stream_arrays(hlo: str, batch: int, tokens, width: int) -> int:
  """How often an array of the token stream's size, `[batch, n, width]` for `n` in `tokens`,
  appears in `hlo` (its logical shapes after optimization) with its axes in another order:
  a residual stream laid out batch-minor shows up as `[n, width, batch]`, once per
  instruction that reads or writes it (vit_jax.ops.PatchEmbedding)."""
  count = 0
  for dims in re.findall(r'\[(\d+),(\d+),(\d+)\]', hlo):
    dims = tuple(map(int, dims))
    count += any(sorted(dims) == sorted((batch, n, width)) and dims != (batch, n, width)
                 for n in tokens)
  return count


_DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 'bf16': 2, 'f16': 2, 's32': 4, 'u32': 4, 'f32': 4}
_LAUNCH = re.compile(r'\s*(?:ROOT )?%(\S+) = (.+?) (fusion|custom-call|copy|transpose)\((.*)$')


def _array_bytes(shapes: str) -> int:
  total = 0
  for dtype, dims in re.findall(rf"\b({'|'.join(_DTYPE_BYTES)})\[([\d,]*)\]", shapes):
    total += _DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(',') if d)
  return total


def memory_passes_gb(hlo: str) -> float:
  """GB that XLA's own kernels other than matmuls read and write per run of the optimized
  program `hlo` (elementwise, reduction and copy fusions: memory-bound passes), counting
  each launch's operands and results once: what fusing them into our kernels can save.
  Matmul fusions, library calls and custom calls (our kernels, cuDNN) are left out."""
  entry = hlo[hlo.index('\nENTRY'):]
  shapes, total = {}, 0
  for line in entry.split('\n'):
    m = _LAUNCH.match(line)
    if not m:
      m2 = re.match(r'\s*(?:ROOT )?%(\S+) = (\S+(?: \S+)*?) [a-z\-]+\(', line)
      if m2:
        shapes[m2.group(1)] = m2.group(2)
      continue
    name, result, op, rest = m.groups()
    shapes[name] = result
    if op == 'custom-call' or 'gemm' in name or '__cublas' in line:
      continue
    operands = re.findall(r'%([\w.\-]+)', rest.split(')', 1)[0])
    total += _array_bytes(result) + sum(_array_bytes(shapes.get(o, '')) for o in operands)
  return total / 1e9


def compile_report(fn, args, target: str, stream: tuple | None = None) -> dict:
  """Compiles `jax.jit(fn)` for `target` on abstract `args` (ShapeDtypeStructs on a
  compile-only device) and reads what XLA wrote about it. `stream`: `(batch, tokens,
  width)` of a transformer's token stream, to count `permuted_stream_arrays`."""
  with tempfile.TemporaryDirectory() as dump, gpu_target.building_for(target):
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile(compiler_options={'xla_dump_to': dump})
    row = {'compile_s': round(time.perf_counter() - start, 2),
           'temp_gib': round(compiled.memory_analysis().temp_size_in_bytes / 2**30, 3)}
    if stream:
      hlo = compiled.as_text()
      row['permuted_stream_arrays'] = permuted_stream_arrays(hlo, *stream)
      row['xla_memory_passes_gb'] = round(memory_passes_gb(hlo), 1)
    thunks = ''.join(open(f, encoding='utf-8').read()
                     for f in glob.glob(os.path.join(dump, '*thunk_sequence.txt')))
    row['thunks'], kernels = parse_thunks(thunks)
    ptxas = _ptxas()
    for ptx in glob.glob(os.path.join(dump, '*.ptx')) if ptxas and kernels else []:
      text = open(ptx, encoding='utf-8').read()
      names = set(re.findall(r'\.entry (\w+)', text)) & set(kernels)
      if names:
        result = subprocess.run([ptxas, '-arch=sm_90a', '-v', ptx, '-o', os.devnull],
                                capture_output=True, text=True, check=True)
        for name, info in parse_ptxas(result.stderr).items():
          kernels.get(name, {}).update(info)
        if len(names) == 1:  # Hopper's warpgroup matmuls, and the older mma.sync (Triton
          # takes it for tiles under 64 rows: the flash kernels' shrunk last tile)
          kernels[names.pop()].update(wgmma=text.count('wgmma.mma_async'),
                                      mma_sync=text.count('mma.sync'))
    for info in kernels.values():
      if 'registers' in info:
        info['blocks_per_sm'] = blocks_per_sm(info['threads'], info['registers'],
                                              info['shared_bytes'])
    row['kernels'] = kernels
  return row


def on_device(device, shape, dtype):
  """An abstract `shape` array placed on (compile-only) `device`."""
  return jax.ShapeDtypeStruct(shape, dtype,
                              sharding=jax.sharding.SingleDeviceSharding(device))


def section_kernels(args, device) -> list[dict]:
  from vision_core import flash_attention, fused_mlp  # pylint: disable=g-import-not-at-top
  rows = []
  # As VisionTransformer(attention='pallas') calls them: q/k/v biases added in the kernels;
  # q, k, v packed in one array (attention_kvq), and (the first tiles only) three arrays.
  kvq = on_device(device, (args.batch, 197, 3, 12, 64), jnp.bfloat16)
  qkv = [on_device(device, (args.batch, 197, 12, 64), jnp.bfloat16)] * 3
  qkv_bias = on_device(device, (3, 12, 64), jnp.bfloat16)
  for i, text in enumerate(args.flash_tiles):
    tiles = parse_flash_tiles(text)

    def loss_kvq(kvq, bias, tiles=tiles):
      out = flash_attention.attention_kvq(kvq, 197, tiles, bias=bias)
      return jnp.sum(out.astype(jnp.float32))

    def loss(q, k, v, bias, tiles=tiles):
      out = flash_attention.attention(q, k, v, 197, tiles, bias=bias)
      return jnp.sum(out.astype(jnp.float32))
    rows.append(({'kernel': 'flash_attention_kvq', 'tiles': text},
                 lambda loss=loss_kvq: (jax.grad(loss, (0, 1)), [kvq, qkv_bias])))
    if i == 0:
      rows.append(({'kernel': 'flash_attention', 'tiles': text},
                   lambda loss=loss: (jax.grad(loss, (0, 1, 2, 3)), [*qkv, qkv_bias])))
  m, d, f = args.batch * 200, 768, 3072
  x, dy = on_device(device, (m, d), jnp.bfloat16), on_device(device, (m, d), jnp.bfloat16)
  w1, b1 = on_device(device, (d, f), jnp.bfloat16), on_device(device, (f,), jnp.bfloat16)
  w2, pre = on_device(device, (f, d), jnp.bfloat16), on_device(device, (m, f), jnp.bfloat16)
  for text in CANDIDATES:
    tiles = parse_tiles(text)
    rows.append(({'kernel': 'mlp_forward', 'tiles': text}, lambda t=tiles: (
        functools.partial(fused_mlp.dense_gelu, tiles=t), (x, w1, b1))))
    rows.append(({'kernel': 'mlp_backward', 'tiles': text}, lambda t=tiles: (
        functools.partial(fused_mlp.gelu_input_grad, tiles=t), (dy, w2, pre))))
  return [_checked(row, build, args.target) for row, build in rows]


def _checked(row, build, target, stream=None) -> dict:
  """`row` with `compile_report` of `build()`'s `(fn, args)` (built for `target`), or with
  the error that building or compiling raised; printed as a JSON line."""
  try:
    with gpu_target.building_for(target):
      fn, fargs = build()
    row.update(compile_report(fn, fargs, target, stream))
  except Exception as e:  # pylint: disable=broad-except
    row['error'] = f'{type(e).__name__}: {e}'[-1500:]
  print(json.dumps(row), flush=True)
  return row


def section_vit(args, device) -> list[dict]:
  # pylint: disable=g-import-not-at-top
  from vision_core import flash_attention, mesh as mesh_lib, optim
  from vit_jax import layers, models_vit, train
  from vit_jax.configs import models
  # pylint: enable=g-import-not-at-top
  mesh = mesh_lib.make_mesh((1, 1), [device])
  schedule = optim.make_schedule(base_lr=1e-3, total_steps=10_000, decay_type='constant')
  tx = optim.make_optimizer(name='adamw', schedule=schedule, grad_norm_clip=1.0,
                            weight_decay=1e-4)
  batch = {'image': jax.ShapeDtypeStruct((args.batch, 224, 224, 3), jnp.float32,
                                         sharding=mesh_lib.batch_sharding(mesh, 4)),
           'label': jax.ShapeDtypeStruct((args.batch,), jnp.int32,
                                         sharding=mesh_lib.batch_sharding(mesh, 1))}
  patches = (224 // 16) ** 2
  multiple = layers.CUDNN_SEQ_MULTIPLE  # cuDNN attention pads the stream to it
  tokens = (patches, patches + 1, -(-(patches + 1) // multiple) * multiple)
  rows = []
  for name in args.variants:
    settings = dict(VARIANTS[name])
    flash_tiles = settings.pop('flash_tiles', None)
    flash_attention.TILES = (parse_flash_tiles(flash_tiles) if flash_tiles
                             else flash_attention.Tiles())
    layers.PALLAS_PACKED_QKV = not settings.pop('flash_unpacked', False)
    mlp_tiles = settings.pop('mlp_tiles', None)
    if mlp_tiles:
      settings['mlp_tiles'] = parse_tile_pair(mlp_tiles)
    model = models_vit.VisionTransformer(
        num_classes=1000, dtype=jnp.bfloat16,
        **dict(dict(attention='cudnn'), **settings), **models.get_model_config('ViT-B_16'))

    def build(model=model):
      state, shardings = train.abstract_train_state(model=model, tx=tx,
                                                    image_shape=(224, 224, 3), mesh=mesh)
      return train.make_train_step(model=model, tx=tx, schedule=schedule, mesh=mesh,
                                   state_shardings=shardings, num_classes=1000), (state, batch)
    rows.append(_checked({'variant': name, **VARIANTS[name]}, build, args.target,
                         stream=(args.batch, tokens, model.hidden_size)))
  return rows


def section_igpt(args, device) -> list[dict]:
  """Image GPT's next-token loss and its gradients (bf16) at 32 x 32 = 1024 tokens, with
  einsum attention (the [B, H, T, T] weights kept for the backward) and flash attention."""
  # pylint: disable=g-import-not-at-top
  from igpt_jax import model as igpt_model
  from igpt_jax import train as igpt_train
  # pylint: enable=g-import-not-at-top
  rows = []
  for size in args.igpt_sizes:
    for attention in ('einsum', 'pallas'):
      model = igpt_model.ImageGPT(**igpt_model.get_size(size), n_ctx=1024,
                                  dtype=jnp.bfloat16, attention=attention)

      def build(model=model):
        params = jax.eval_shape(lambda: igpt_model.init_params(model, jax.random.key(0)))
        params = jax.tree.map(lambda a: on_device(device, a.shape, a.dtype), params)
        tokens = on_device(device, (args.igpt_batch, 1024), jnp.int32)

        def loss(params, tokens):  # the trainer's generative loss
          return jnp.mean(igpt_train.token_losses(model, params, tokens,
                                                  objective='generative')[0])
        return jax.grad(loss), (params, tokens)
      row = {'model': f'igpt-{size}', 'attention': attention, 'batch': args.igpt_batch,
             'tokens': 1024}
      rows.append(_checked(row, build, args.target))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--target', default='h100', choices=list(gpu_target.TARGETS))
  parser.add_argument('--sections', nargs='+', default=['kernels', 'vit', 'igpt'],
                      choices=['kernels', 'vit', 'igpt'])
  parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
  parser.add_argument('--flash-tiles', nargs='+',
                      default=['64,64,64,64,4,3', '64,64,64,64,4,2', '128,64,128,64,8,2',
                               '64,32,64,32,4,3'])
  parser.add_argument('--batch', type=int, default=512)
  parser.add_argument('--igpt-sizes', nargs='+', default=['S', 'L'])
  parser.add_argument('--igpt-batch', type=int, default=8)
  parser.add_argument('--out', help='append one JSON line per check here')
  args = parser.parse_args()
  # A missing CUDA plugin (or a bad --out) is the user's to fix: one line, not the chained
  # traceback of jax's topology lookup.
  with cli_errors(parser.prog):
    _run(args)


def _run(args):
  if not os.environ.get('JAX_PLATFORMS'):
    # Compile only: run on the CPU, so that no GPU is looked for (nor taken, where one is).
    jax.config.update('jax_platforms', 'cpu')
  device = gpu_target.compile_only_devices(args.target)[0]
  rows = []
  if 'kernels' in args.sections:
    rows += section_kernels(args, device)
  if 'vit' in args.sections:
    rows += section_vit(args, device)
  if 'igpt' in args.sections:
    rows += section_igpt(args, device)
  if args.out:
    with open(args.out, 'a', encoding='utf-8') as f:
      for row in rows:
        f.write(json.dumps(dict(row, target=args.target, jax=jax.__version__)) + '\n')
  for row in rows:
    what = (row.get('variant') or (f"{row['model']} {row['attention']}" if 'model' in row
                                   else f"{row['kernel']} {row['tiles']}"))
    if 'error' in row:
      print(f'{what:40s} ERROR {row["error"][-200:]}')
      continue
    thunks = ' '.join(f'{kind[1:]} {n}' for kind, n in sorted(row['thunks'].items()))
    permuted = (f"  permuted stream arrays {row['permuted_stream_arrays']}, XLA's memory "
                f"passes {row['xla_memory_passes_gb']} GB"
                if 'permuted_stream_arrays' in row else '')
    print(f"{what:40s} {row['compile_s']:5.1f} s  temp {row['temp_gib']:6.2f} GiB  {thunks}"
          f"{permuted}")
    for name, k in sorted(row['kernels'].items()):
      print(f"    {name:28s} grid {k['grid']} threads {k['threads']} shared "
            f"{k['shared_bytes']} B regs {k.get('registers')} spills "
            f"{k.get('spill_store_bytes')}/{k.get('spill_load_bytes')} B "
            f"blocks/SM {k.get('blocks_per_sm')} wgmma {k.get('wgmma')} "
            f"mma.sync {k.get('mma_sync')}")


if __name__ == '__main__':
  main()
