"""ViT inference, ours (jit) against HF transformers (PyTorch eager), on the same weights.

  python bench/hf_vit_inference.py [--model ViT-B_16] [--resolution 224] [--batch 8] [--rounds 5]
  python bench/hf_vit_inference.py --checkpoint vit_jax/weights/vit_cifar10/model.npz --batch 256

Random weights for the zoo model go through `vit_jax.hf_export` and HF's own
`ViTForImageClassification.from_pretrained`, and the two forward passes must agree (logits to
1e-4 of their scale) before anything is timed. Then the rounds alternate the two sides on one
float32 batch `[B, R, R, 3]` (HF's NCHW copy made once); each side's time is the median and
best per batch, after a warm-up call (our compilation, HF's first-call setup). Thread counts
are each library's default (printed). Needs the test extra (torch 2.13.0 CPU, transformers).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--model', default='ViT-B_16')
  parser.add_argument('--resolution', type=int, default=224)
  parser.add_argument('--batch', type=int, default=8)
  parser.add_argument('--classes', type=int, default=1000)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--checkpoint', help='a ViT checkpoint instead of random weights, e.g. '
                      'vit_jax/weights/vit_cifar10/model.npz (its model and resolution)')
  args = parser.parse_args()

  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  from vit_jax import checkpoint, hf_export, models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import models  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  if args.checkpoint:
    loaded = checkpoint.load_for_inference(args.checkpoint)
    model, params, size = loaded.model, loaded.params, loaded.resolution
    args.model = loaded.model_name
  else:
    config = models.get_model_config(args.model)
    model = models_vit.VisionTransformer(num_classes=args.classes, **config)
    size = args.resolution
    params = model.init(jax.random.key(0), np.zeros((1, size, size, 3), np.float32))['params']
    # (The head starts at zero: random, so the logits differ.)
    params = jax.tree.map(lambda x: (np.asarray(x) + rng.normal(size=x.shape) * 0.02)
                          .astype(np.float32), params)
    loaded = checkpoint.Inference(model=model, config=config, params=params, resolution=size,
                                  resolution_from='argument', model_name=args.model,
                                  class_names=None, meta=None)
  with tempfile.TemporaryDirectory() as tmp:
    hf_export.export(loaded, os.path.join(tmp, 'hf'))
    hf = transformers.ViTForImageClassification.from_pretrained(os.path.join(tmp, 'hf')).eval()

  images = rng.uniform(-1, 1, (args.batch, size, size, 3)).astype(np.float32)
  images_nchw = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  forward = jax.jit(lambda p, x: model.apply({'params': p}, x))
  device_params = jax.device_put(params)
  device_images = jax.device_put(images)

  def ours():
    return forward(device_params, device_images).block_until_ready()

  def theirs():
    with torch.inference_mode():
      return hf(pixel_values=images_nchw).logits

  ours_logits, hf_logits = np.asarray(ours()), theirs().numpy()
  error = float(np.abs(ours_logits - hf_logits).max() / np.abs(hf_logits).max())
  assert error < 1e-4, f'the forward passes disagree: {error:.2e} of the logits\' scale'
  times = {'ours': [], 'hf': []}
  for _ in range(args.rounds):
    for name, fn in (('ours', ours), ('hf', theirs)):
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)

  attention = getattr(hf.config, '_attn_implementation', '?')
  print(f'{args.model} at {size} px, batch {args.batch}, {args.rounds} alternating rounds; '
        f'jax {jax.__version__} ({jax.devices()[0].platform}, {jax.device_count()} devices), '
        f'torch {torch.__version__} ({torch.get_num_threads()} threads), transformers '
        f'{transformers.__version__} (attention {attention}); '
        f'logits agree to {error:.1e} of their scale')
  print('| side | median s/batch | best s/batch | img/s (median) |')
  print('|---|---|---|---|')
  for name, label in (('ours', 'ours (jax.jit, float32)'),
                      ('hf', 'HF ViTForImageClassification (torch eager, float32)')):
    median = statistics.median(times[name])
    print(f'| {label} | {median:.3f} | {min(times[name]):.3f} | {args.batch / median:.1f} |')
  print(f'ratio (HF median / ours median): '
        f'{statistics.median(times["hf"]) / statistics.median(times["ours"]):.2f}x')


if __name__ == '__main__':
  main()
