"""Image GPT sampling speed: KV-cached JAX vs full recompute per token vs HF transformers.

    python bench/igpt_sampling.py --width 256 --heads 8 --layers 8 \
        --batch 8 --tokens 1024

One run, one set of weights (an HF `ImageGPTForCausalImageModeling` with random weights and
zero biases, saved by HF and loaded here with `igpt_jax.checkpoint`), three samplers of
`--tokens` tokens (32 x 32 images) for `--batch` images, unconditional, temperature 1, no
top-k / top-p:

  jax_cached     igpt_jax.sample, KV cache, one jit-compiled lax.scan over the tokens.
  jax_recompute  the release's method: a full forward pass over the sequence per token (also
                 jit-compiled). Every token costs the same full pass, so it is timed over the
                 last `--recompute_tokens` tokens and reported per token.
  hf_generate    transformers' `generate(do_sample=True, top_k=0)` with its KV cache, torch
                 CPU, `--threads` threads.

Compilation / warm-up is excluded (each sampler runs once before timing). Prints a markdown
table and writes JSON with `--out`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import jax


def best_of(fn, repeats: int) -> float:
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return min(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--width', type=int, default=256)
  parser.add_argument('--heads', type=int, default=8)
  parser.add_argument('--layers', type=int, default=8)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--tokens', type=int, default=1024)
  parser.add_argument('--recompute_tokens', type=int, default=8)
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--threads', type=int, default=os.cpu_count())
  parser.add_argument('--skip_hf', action='store_true')
  parser.add_argument('--out', default='')
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from igpt_jax import checkpoint, sample  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  config = transformers.ImageGPTConfig(n_embd=args.width, n_layer=args.layers,
                                       n_head=args.heads, n_positions=args.tokens,
                                       vocab_size=513)
  torch.manual_seed(0)
  hf = transformers.ImageGPTForCausalImageModeling(config).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      if name.endswith('.bias'):
        p.zero_()
  with tempfile.TemporaryDirectory() as tmp:
    hf.save_pretrained(tmp, safe_serialization=True)
    params, model = checkpoint.load(tmp)
  params = jax.device_put(params)
  b, n = args.batch, args.tokens
  key = jax.random.PRNGKey(0)
  results = {}

  cached = sample.make_sampler(model, num_tokens=n)
  run = lambda: cached(params, key, batch_size=b).block_until_ready()
  run()
  seconds = best_of(run, args.repeats)
  results['jax_cached'] = dict(seconds=seconds, tokens_per_s=b * n / seconds)
  print('jax_cached', results['jax_cached'], flush=True)

  k = args.recompute_tokens
  recompute = sample.make_sampler(model, num_tokens=n, prefix_len=n - k, cached=False)
  prefix = jax.numpy.zeros((b, n - k), jax.numpy.int32)
  run = lambda: recompute(params, key, prefix).block_until_ready()
  run()
  seconds = best_of(run, args.repeats)
  results['jax_recompute'] = dict(seconds_per_token=seconds / k, tokens_per_s=b * k / seconds,
                                  seconds_for_all_tokens=seconds / k * n)
  print('jax_recompute', results['jax_recompute'], flush=True)

  if not args.skip_hf:
    sos = torch.full((b, 1), 512, dtype=torch.long)
    def run_hf(length=n):
      with torch.no_grad():
        out = hf.generate(input_ids=sos, max_length=length + 1, do_sample=True, top_k=0,
                          use_cache=True, pad_token_id=0,
                          attention_mask=torch.ones_like(sos))
      assert out.shape == (b, length + 1), out.shape
    run_hf(16)  # Warm-up (eager PyTorch: nothing to compile, a short run suffices).
    seconds = best_of(run_hf, args.repeats)
    results['hf_generate'] = dict(seconds=seconds, tokens_per_s=b * n / seconds)

  speed = {k: v['tokens_per_s'] for k, v in results.items()}
  summary = dict(
      config=vars(args), device=str(jax.devices()[0]), machine=platform.processor() or
      platform.machine(), jax=jax.__version__, torch=torch.__version__,
      transformers=transformers.__version__, results=results,
      cached_over_recompute=speed['jax_cached'] / speed['jax_recompute'])
  if 'hf_generate' in speed:
    summary['cached_over_hf'] = speed['jax_cached'] / speed['hf_generate']
  print(f'| sampler | tokens/s (batch {b}, {n} tokens) |\n|---|---|')
  for name, value in speed.items():
    print(f'| {name} | {value:,.0f} |')
  print(f'cached / recompute: {summary["cached_over_recompute"]:.1f}x'
        + (f', cached / HF generate: {summary["cached_over_hf"]:.2f}x'
           if 'cached_over_hf' in summary else ''))
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      json.dump(summary, f, indent=2)


if __name__ == '__main__':
  main()
