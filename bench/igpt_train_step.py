"""Seconds per Image GPT training step (generative objective) of this checkout, on one device.

  python bench/igpt_train_step.py --size tiny --image 16 --batch 64 --steps 12
  python bench/igpt_train_step.py --size S L --image 32 --batch 8 --steps 20 \
      --dtype bfloat16 --attention einsum pallas --out OUT.jsonl        # on a GPU

Times `igpt_jax.train.make_train_step` (AdamW, clipping, the palette lookup on the device) on
one random batch, after 3 warm-up steps, and prints the step time and the last bits/dim (equal
bits/dim between two checkouts say they compute the same thing). To compare two commits, run
it from a worktree of each, alternately; CPU runs of the trainer set the glibc malloc options
of vision_core/host_memory.py, so time them under
`GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=-1`
as well.

On a GPU, `--attention einsum pallas` compares the einsum attention (the [B, H, T, T]
weights kept for the backward) with vision_core.flash_attention's causal kernels, in one
process on the same batch. Each run also gives tokens/s, the peak device memory where the
backend reports it, and model TFLOP/s: 6 N + 6 L T D per token (N the matmul parameters; the
causal attention's QK^T and PV counted for the keys up to each query), against the bf16
datasheet peak (bench/gpu_suite.py). bench/gpu_aot_check.py compiles the same gradients for an
H100 without one.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def matmul_params(params) -> int:
  """Parameters that multiply activations: every array of rank >= 2 but the token and
  position embeddings (looked up, not multiplied)."""
  import jax  # pylint: disable=g-import-not-at-top
  return sum(leaf.size for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if leaf.ndim >= 2 and jax.tree_util.keystr(path) not in ("['wte']", "['wpe']"))


def time_step(size: str, attention: str, args) -> dict:
  """One model's row: `step_s`, `tokens_per_s`, `bits_per_dim`, `model_tflops`, ..."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  import ml_collections
  import numpy as np
  from bench.gpu_suite import DATASHEET_BF16_FLOPS
  from igpt_jax import model as model_lib
  from igpt_jax import train
  # pylint: enable=g-import-not-at-top
  tokens = args.image * args.image
  dims = model_lib.get_size(size)
  model = model_lib.ImageGPT(vocab_size=512, n_ctx=tokens, dtype=jnp.dtype(args.dtype),
                             attention=attention, **dims)
  params = model_lib.init_params(model, jax.random.key(0), tokens)
  optimizer = train.make_optimizer(ml_collections.ConfigDict(dict(
      lr=3e-3, total_steps=2000, warmup_steps=100, grad_clip=1.0, b2=0.95, weight_decay=0.0)))
  state = dict(params=params, opt_state=optimizer.init(params), step=jnp.zeros((), jnp.int32))
  step = train.make_train_step(model=model, optimizer=optimizer, objective='generative')
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (args.batch, args.image, args.image, 3), np.uint8),
           'label': rng.integers(0, 10, args.batch).astype(np.int32)}
  centers = jnp.asarray(rng.uniform(-1, 1, (512, 3)).astype(np.float32))
  key = jax.random.key(1)
  for _ in range(3):
    state, metrics = step(state, batch, centers, key)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch, centers, key)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / args.steps
  flops = 6 * matmul_params(params) + 6 * dims['num_layers'] * tokens * dims['width']
  row = dict(section='igpt_train', model=size, attention=attention, dtype=args.dtype,
             batch=args.batch, tokens=tokens, step_s=seconds,
             tokens_per_s=args.batch * tokens / seconds,
             bits_per_dim=float(metrics['bits_per_dim']),
             model_tflops=flops * args.batch * tokens / seconds / 1e12,
             mfu_datasheet=flops * args.batch * tokens / seconds / DATASHEET_BF16_FLOPS,
             jax=jax.__version__, device=jax.devices()[0].device_kind)
  peak = (jax.devices()[0].memory_stats() or {}).get('peak_bytes_in_use')
  if peak:
    row['peak_gib'] = peak / 2**30
  return row


def main(argv=None) -> list:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--size', nargs='+', default=['tiny'], help='igpt_jax.model.SIZES names')
  parser.add_argument('--image', type=int, default=16, help='image side: image^2 tokens')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=12, help='timed steps')
  parser.add_argument('--dtype', default='float32', choices=['float32', 'bfloat16'],
                      help='compute dtype (parameters stay float32)')
  parser.add_argument('--attention', nargs='+', default=['einsum'],
                      help="igpt_jax.model.ATTENTIONS: 'einsum', 'pallas' (GPUs), "
                           "'pallas_interpret'")
  parser.add_argument('--out', help='append one JSON line per run here')
  args = parser.parse_args(argv)
  rows = []
  for size in args.size:
    for attention in args.attention:
      try:
        row = time_step(size, attention, args)
        print(f"{size} {attention} {args.batch}x{row['tokens']} tokens: "
              f"{row['step_s']:.3f} s/step, {args.batch / row['step_s']:.1f} img/s, "
              f"bits/dim {row['bits_per_dim']:.5f}, {row['model_tflops']:.1f} TFLOP/s "
              f"(jax {row['jax']}, {row['device']})", flush=True)
      except Exception as e:  # pylint: disable=broad-except  (e.g. out of memory)
        row = dict(section='igpt_train', model=size, attention=attention,
                   error=f'{type(e).__name__}: {e}'[:2000])
        print(f'{size} {attention}: {row["error"][:300]}', flush=True)
      if args.out:
        with open(args.out, 'a', encoding='utf-8') as f:
          f.write(json.dumps(row) + '\n')
      rows.append(row)
  return rows


if __name__ == '__main__':
  main()
