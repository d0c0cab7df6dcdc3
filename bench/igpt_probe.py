"""Linear-probe accuracy of a small Image GPT pretrained on this CPU for a fixed time budget,
against logistic regression on raw palette-dequantised pixels under the same protocol.

    python bench/igpt_probe.py --minutes 60 --size tiny \
        --image_size 16 --dataset ../shared/data/cifar10 --workdir /tmp/igpt_probe_run

1. Pretrains `configs/igpt.py:SIZE,cifar10` (next-token loss) until `--minutes` are spent
   (palette fitted on training pixels; resumes if the workdir already holds a run).
2. Probes every layer (sequence mean of each block's normalised input, then ln_f) on
   `--train_examples` training and `--test_examples` test images: standardised features,
   L2 multinomial logistic regression (L-BFGS), L2 chosen on a held-out tenth of the
   training examples, refitted on all of them, scored on the test images.
3. The baseline: the same protocol on the palette-dequantised pixels ([H * W * 3] in
   [-1, 1]), i.e. exactly the information the model sees.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import pathlib
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--minutes', type=float, default=60)
  parser.add_argument('--size', default='tiny')
  parser.add_argument('--image_size', type=int, default=16)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--lr', type=float, default=3e-3)
  parser.add_argument('--dataset', default=os.path.join('..', 'shared', 'data', 'cifar10'))
  parser.add_argument('--train_examples', type=int, default=10_000)
  parser.add_argument('--test_examples', type=int, default=2_000)
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', default='')
  args = parser.parse_args()

  from igpt_jax import checkpoint, palette, probe, train  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location('igpt_config', ROOT / 'configs' / 'igpt.py')
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(f'{args.size},cifar10')
  config.update(dict(dataset=args.dataset, image_size=args.image_size, batch_size=args.batch,
                     lr=args.lr, total_steps=1_000_000, warmup_steps=200,
                     time_limit_minutes=args.minutes, eval_every=1_000_000,
                     checkpoint_every=2000, log_every=100, eval_examples=2000,
                     cache_in_memory=True))
  start = time.time()
  result = train.train_and_evaluate(config, args.workdir)
  train_minutes = (time.time() - start) / 60

  params, model = checkpoint.load(os.path.join(args.workdir, 'params.npz'))
  centers = palette.load_palette(os.path.join(args.workdir, 'palette.npy'))
  tr_tok, tr_lab, k = probe.load_split(args.dataset, 'train', args.image_size,
                                       args.train_examples, centers)
  te_tok, te_lab, _ = probe.load_split(args.dataset, 'test', args.image_size,
                                       args.test_examples, centers)
  rows = probe.probe_layers(probe.extract_features(model, params, tr_tok), tr_lab,
                            probe.extract_features(model, params, te_tok), te_lab,
                            num_classes=k)
  raw = lambda t: palette.dequantize(t, centers).reshape(len(t), -1).astype(np.float32
                                                                            ) / 127.5 - 1
  baseline = probe.probe_layers(raw(tr_tok)[None], tr_lab, raw(te_tok)[None], te_lab,
                                num_classes=k)[0]
  best = max(rows, key=lambda r: r['val_accuracy'])  # Chosen on validation, not test.
  summary = dict(config=vars(args), steps=result['step'], train_minutes=train_minutes,
                 test_bits_per_dim=result['test']['bits_per_dim'], layers=rows,
                 best_layer_by_val=best, raw_pixels=baseline)
  print(probe.format_table(rows, model.num_layers))
  print(f'| raw pixels | - | {baseline["l2"]:g} | {100 * baseline["val_accuracy"]:.1f}% | '
        f'{100 * baseline["test_accuracy"]:.1f}% |')
  print(f'steps {result["step"]} in {train_minutes:.1f} min, test bits/dim '
        f'{result["test"]["bits_per_dim"]:.3f}; best layer (by val) {best["layer"]}: '
        f'{100 * best["test_accuracy"]:.1f}% vs raw pixels {100 * baseline["test_accuracy"]:.1f}%')
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      json.dump(summary, f, indent=2)


if __name__ == '__main__':
  main()
