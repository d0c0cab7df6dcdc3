"""Top-k labels for image files or folders, from an official, HF or our own ViT checkpoint.

  python -m vit_jax.predict --checkpoint runs/ti/model.npz photos/ cat.jpg
  python -m vit_jax.predict --checkpoint ViT-B_16.npz --model ViT-B_16 --resolution 384 \
      --labels imagenet2012 --csv predictions.csv dog.jpg
  python -m vit_jax.predict --checkpoint vit-base-patch16-224/ dog.jpg  # HF save_pretrained

A checkpoint written by `vit_jax.main` has a `model.json` beside it (model config, class
names, resolution), so nothing else is needed. For an official `.npz`, the model is told
from its shapes (pass `--model` where they fit no zoo model or several); the
class count comes from the file's head, the resolution from its position embeddings (or
`--resolution`), and the label names from `--labels` (by default imagenet2012 for 1,000
classes, cifar10 / cifar100 for 10 / 100, else class numbers). An HF transformers ViT folder
gives all of these in its config.json (id2label, image_size; `vit_jax.hf_import`), and its
preprocessor_config.json says how images are resized and cropped.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
from typing import Any

import numpy as np

from vision_core import images as images_lib
from vision_core import io
from vision_core.data import preprocess as pp_lib
from vision_core.errors import UserInputError, cli_errors


def _label_names(spec: str | None, num_classes: int) -> list[str]:
  from vit_jax import class_names  # pylint: disable=g-import-not-at-top
  if spec is None:
    spec = {1000: 'imagenet2012', 10: 'cifar10', 100: 'cifar100'}.get(num_classes)
    if spec is None:
      return [str(i) for i in range(num_classes)]
    # A guess from the class count alone: said, since a user's own 10-class model would
    # otherwise be shown with CIFAR-10's names as if they were its own.
    print(f'labels: {spec} names assumed for a {num_classes}-class head (no model.json class '
          'names); pass --labels FILE (one name per line) for other classes.', file=sys.stderr)
  if os.path.isfile(spec):
    with open(spec, encoding='utf-8') as f:
      names = [line.strip() for line in f if line.strip()]
  else:
    names = list(class_names.get(spec))
  if len(names) != num_classes:
    raise UserInputError(f'--labels {spec}: {len(names)} names, but the checkpoint predicts '
                         f'{num_classes} classes.')
  return names


def load_model(checkpoint: str, *, model_name: str | None, resolution: int | None,
               labels: str | None, meta: dict[str, Any] | None = None,
               model_arg: str = '--model'):
  """(model, params, class names, resolution) for `checkpoint`; the policy is
  `vit_checkpoint.load_for_inference`'s (model.json unless `model_name`, else the shapes).

  `meta`: the checkpoint's model.json, for a caller that has read it already
  (`vit_checkpoint.model_json`); None: it is looked for here (not when `model_name` is
  given: the zoo config is used then). `labels` replaces model.json's class names.
  `model_arg`: the flag or config field that names a zoo model, for the error messages.
  """
  from vit_jax import checkpoint as vit_checkpoint  # pylint: disable=g-import-not-at-top
  loaded = vit_checkpoint.load_for_inference(checkpoint, model_name=model_name,
                                             resolution=resolution, meta=meta,
                                             model_arg=model_arg)
  if loaded.resolution_from == 'position embeddings' and loaded.resolution != 224:
    # e.g. an official checkpoint fine-tuned at 384: said, as it is not the usual size.
    print(f'resolution: {loaded.resolution} px, from the checkpoint\'s position embeddings',
          file=sys.stderr)
  names = loaded.class_names if labels is None else None
  num_classes = int(np.shape(loaded.params['head']['bias'])[0])
  names = names or _label_names(labels, num_classes)
  return loaded.model, loaded.params, names, loaded.resolution


def saved_test_preprocess(meta: dict[str, Any] | None, resolution: int) -> str | None:
  """The op spec that `vit_jax.main` evaluated the model with (`meta`, its `model.json`:
  `test_preprocess`, e.g. a `pp.test_ops` of `resize_small(256)|central_crop(224)|...`), when
  it was written for `resolution`; else None."""
  meta = meta or {}
  return meta.get('test_preprocess') if meta.get('resolution') == resolution else None


def predict(paths: list[str], *, model, params, resolution: int, top: int = 5,
            batch_size: int = 32, preprocess: str | None = None
            ) -> list[tuple[str, list[tuple[int, float]]]]:
  """[(path, [(class, probability) x top])], best first. `preprocess`: the op spec that
  turns an RGB image into the model's input (default: resize to `resolution`, [-1, 1])."""
  from vit_jax import train  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  transform = pp_lib.parse(preprocess or f'to_rgb|resize({resolution})|value_range(-1, 1)')
  predict_fn = train.make_predict_fn(model=model)
  params = jax.device_put(params)
  results = []
  for start in range(0, len(paths), batch_size):
    chunk = paths[start:start + batch_size]
    batch = np.stack([transform({'image': images_lib.read_image(p)})['image'] for p in chunk])
    n = len(chunk)
    if n < batch_size and len(paths) > batch_size:  # one compiled shape for every batch
      batch = np.concatenate([batch, np.repeat(batch[:1], batch_size - n, 0)])
    probs = np.asarray(predict_fn(params, batch))[:n]
    for path, p in zip(chunk, probs):
      order = np.argsort(-p, kind='stable')[:top]
      results.append((path, [(int(i), float(p[i])) for i in order]))
  return results


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='vit_jax.predict', description=__doc__.split('\n')[0])
  parser.add_argument('inputs', nargs='+', type=io.path_arg,
                      help='image files and/or folders of images')
  parser.add_argument('--checkpoint', required=True, type=io.path_arg,
                      help='.npz (official layout), or an HF ViT save_pretrained folder')
  parser.add_argument('--model', help='zoo name, e.g. ViT-B_16 (default: from model.json)')
  parser.add_argument('--resolution', type=int, help='input size (default: model.json or 224)')
  parser.add_argument('--labels', type=io.path_arg,
                      help='imagenet2012 | cifar10 | cifar100 | a text file')
  parser.add_argument('--top', type=int, default=5)
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--csv', type=io.path_arg,
                      help='also write file,rank,class_index,label,probability rows')
  parser.add_argument('--force', action='store_true', help='overwrite an existing --csv')
  args = parser.parse_args(argv)
  with cli_errors('vit_jax.predict'):
    for flag, value in (('--top', args.top), ('--batch', args.batch),
                        ('--resolution', args.resolution)):
      if value is not None and value < 1:
        raise UserInputError(f'{flag} {value}: expected a positive whole number.')
    if args.csv:
      io.check_can_write(args.csv, overwrite=args.force)
    from vit_jax import checkpoint as vit_checkpoint  # pylint: disable=g-import-not-at-top
    vit_checkpoint.check_exists(args.checkpoint, label=f'--checkpoint {args.checkpoint}')
    paths = images_lib.expand_inputs(args.inputs)
    if args.csv:  # --force replaces an old CSV, never the checkpoint or an image read here.
      io.check_not_an_input(args.csv, paths + [args.checkpoint, args.labels,
                                               vit_checkpoint.model_json_path(args.checkpoint)],
                            flag='--csv')
    # Read once: it gives both the model and the test preprocessing. --model: a zoo model.
    meta = None if args.model else vit_checkpoint.model_json(args.checkpoint)
    model, params, names, resolution = load_model(
        args.checkpoint, model_name=args.model, resolution=args.resolution, labels=args.labels,
        meta=meta)
    # Images are prepared as the run's test split was (its pp.test_ops, if it set them), or
    # as an HF save's image processor would (resize, crop).
    from vit_jax import hf_import  # pylint: disable=g-import-not-at-top
    if args.model:
      preprocess = None
    elif hf_import.is_hf_save(args.checkpoint):  # (--resolution: its sizes are not for it)
      preprocess = None if args.resolution else hf_import.test_ops(args.checkpoint, resolution)
    else:
      preprocess = saved_test_preprocess(meta, resolution)
    results = predict(paths, model=model, params=params, resolution=resolution,
                      top=min(args.top, len(names)), batch_size=args.batch,
                      preprocess=preprocess)
    width = max(len(n) for n in names)
    for path, top in results:
      print(path)
      for rank, (index, prob) in enumerate(top, 1):
        print(f'  {rank}  {names[index]:<{width}}  {100 * prob:6.2f}%')
    if args.csv:
      with io.atomic_write(args.csv, 'w', overwrite=args.force) as f:
        writer = csv.writer(f)
        writer.writerow(['file', 'rank', 'class_index', 'label', 'probability'])
        for path, top in results:
          for rank, (index, prob) in enumerate(top, 1):
            writer.writerow([path, rank, index, names[index], f'{prob:.6f}'])
      print(f'wrote {args.csv}', file=sys.stderr)


if __name__ == '__main__':
  main()
