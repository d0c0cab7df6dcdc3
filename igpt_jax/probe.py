"""Linear probes: logistic regression on each layer's pooled features (Chen et al. 2020, §3).

A layer's feature is the sequence mean of its block's normalised input (`ln_1` output);
the last "layer" is the pooled `ln_f` output. For each layer an L2-regularised multinomial
logistic regression is fitted (full-batch L-BFGS, in JAX) on the training split, its L2
strength chosen on a held-out tenth of it, then refitted on all of it and scored on the
test split. The paper found the middle layers best.

Every layer's features of every example are held at once (iGPT-L, 50,000 training images:
49 x 50,000 x 1536 floats, 15 GB). `--layers` keeps only the chosen layers' (a layer's
probe is the same either way); `--features_on_disk` holds them in `.npy` files in `--out`,
mapped into memory, so that only the layer being fitted need fit in RAM.

  python -m igpt_jax.probe --params runs/igpt/params.npz --palette runs/igpt/palette.npy \
      --dataset ../shared/data/cifar10 --image_size 16 --out runs/igpt/probe
"""

from __future__ import annotations

import argparse
import functools
import json
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from igpt_jax import palette as palette_lib
from igpt_jax import model as igpt_model
from vision_core import io, mesh as mesh_lib
from vision_core.errors import UserInputError, cli_errors


def extract_features(model, params, tokens, *, batch_size: int = 256,
                     layers: Sequence[int] | None = None, out: np.ndarray | None = None,
                     mesh: jax.sharding.Mesh | None = None):
  """Tokens `[N, T]` -> features `[len(layers), N, D]` (float32; all L + 1 by default), in
  batches, written into `out` when given (e.g. a disk-backed `open_memmap`).

  Each batch is split over `mesh`'s 'data' axis (default: every device of this process),
  the parameters replicated; a batch is `batch_size` rows rounded up to a multiple of the
  devices, the last one padded (one compiled shape). Only the chosen layers leave the
  devices and are kept: all of iGPT-L's 49 for 50,000 images are 15 GB, one is 0.3 GB. The
  rows are written in place (a list of chunks concatenated at the end held every feature
  twice).
  """
  idx = np.arange(model.num_layers + 1) if layers is None else np.asarray(layers)
  mesh = mesh_lib.local_data_mesh() if mesh is None else mesh
  params = jax.device_put(params, mesh_lib.replicated(mesh))
  fn = jax.jit(lambda p, t: model.apply({'params': p}, t, return_features=True)['features'][idx])
  tokens = np.asarray(tokens)
  shape = (len(idx), len(tokens), model.width)
  if out is None:
    out = np.empty(shape, np.float32)
  elif out.shape != shape:
    raise ValueError(f'out: expected shape {shape}, got {out.shape}.')
  rows = mesh_lib.rows_per_batch(batch_size, len(tokens), mesh)
  for i in range(0, len(tokens), rows):
    chunk = tokens[i:i + rows]
    n = len(chunk)
    if n < rows:  # Pad: one compiled shape, whole rows for every device.
      chunk = np.concatenate([chunk, np.repeat(chunk[:1], rows - n, 0)])
    chunk = jax.device_put(chunk, mesh_lib.batch_sharding(mesh, chunk.ndim))
    out[:, i:i + n] = np.asarray(fn(params, chunk))[:, :n]
  return out


def logreg_loss(w, b, x, y, l2):
  """Mean softmax cross-entropy + `l2 / 2 * |w|^2` (bias unregularised)."""
  logits = x @ w + b
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)) + 0.5 * l2 * jnp.sum(
      w * w)


@functools.partial(jax.jit, static_argnames=('num_classes', 'steps'))
def fit_logreg(x, y, *, num_classes: int, l2: float, steps: int = 300):
  """L2 logistic regression by L-BFGS. `x [N, D]`, `y [N]` -> `(w [D, K], b [K])`."""
  params = (jnp.zeros((x.shape[1], num_classes)), jnp.zeros((num_classes,)))
  loss = lambda p: logreg_loss(p[0], p[1], x, y, l2)
  opt = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry, _):
    p, state = carry
    value, grad = value_and_grad(p, state=state)
    updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
    return (optax.apply_updates(p, updates), state), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
  return params


def accuracy(w, b, x, y) -> float:
  return float(np.mean(np.argmax(np.asarray(x @ w + b), -1) == np.asarray(y)))


def standardize(train, test):
  """Per-dimension standardisation with the training statistics."""
  mean, std = train.mean(0), train.std(0) + 1e-6
  return (train - mean) / std, (test - mean) / std


def probe_layers(train_features, train_labels, test_features, test_labels, *,
                 num_classes: int, l2_grid: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1),
                 steps: int = 300, seed: int = 0,
                 layer_ids: Sequence[int] | None = None) -> list[dict]:
  """Per-layer probes. Features `[L, N, D]` (numbered `layer_ids`, by default 0 .. L - 1);
  returns one dict per layer with its `layer`, the chosen `l2`, `val_accuracy` and
  `test_accuracy`. Each layer's probe depends on its features only (the held-out tenth is
  the same for all), so a subset of the layers gives those layers' rows unchanged."""
  train_labels, test_labels = np.asarray(train_labels), np.asarray(test_labels)
  n = len(train_labels)
  if num_classes < 2:
    raise UserInputError(f'num_classes={num_classes}: a probe needs at least 2 classes (with '
                         'one, every accuracy is 100%).')
  if n < 2:
    raise UserInputError(f'{n} training example(s): a probe needs at least 2 (a tenth, at '
                         'least one, is held out to choose the L2 strength).')
  order = np.random.default_rng(seed).permutation(n)
  val, fit = order[:max(n // 10, 1)], order[max(n // 10, 1):]
  rows = []
  layer_ids = range(len(train_features)) if layer_ids is None else layer_ids
  for layer, tr, te in zip(layer_ids, train_features, test_features):
    tr, te = standardize(np.asarray(tr, np.float32), np.asarray(te, np.float32))
    scores = []
    for l2 in l2_grid:
      w, b = fit_logreg(tr[fit], train_labels[fit], num_classes=num_classes, l2=l2, steps=steps)
      scores.append(accuracy(w, b, tr[val], train_labels[val]))
    best = int(np.argmax(scores))
    w, b = fit_logreg(tr, train_labels, num_classes=num_classes, l2=l2_grid[best], steps=steps)
    rows.append(dict(layer=int(layer), l2=l2_grid[best], val_accuracy=scores[best],
                     test_accuracy=accuracy(w, b, te, test_labels)))
  return rows


def format_table(rows: list[dict], num_blocks: int) -> str:
  lines = ['| layer | features | L2 | val acc | test acc |', '|---|---|---|---|---|']
  for r in rows:
    what = f'block {r["layer"]} ln_1' if r['layer'] < num_blocks else 'ln_f'
    lines.append(f'| {r["layer"]} | {what} | {r["l2"]:g} | {100 * r["val_accuracy"]:.1f}% '
                 f'| {100 * r["test_accuracy"]:.1f}% |')
  return '\n'.join(lines)


def plot(rows: list[dict], path: str, *, overwrite: bool = False) -> None:
  """Test accuracy per layer, as a PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(5, 3.2))
  ax.plot([r['layer'] for r in rows], [100 * r['test_accuracy'] for r in rows], 'o-')
  ax.set_xlabel('layer (last: ln_f)')
  ax.set_ylabel('linear probe test accuracy (%)')
  ax.grid(alpha=0.3)
  fig.tight_layout()
  with io.atomic_write(path, 'wb', overwrite=overwrite) as f:
    fig.savefig(f, format='png', dpi=120)
  plt.close(fig)


def load_split(dataset, split, image_size, limit, centers, *, source=None):
  """(tokens, labels, number of classes) of up to `limit` images of `split` (all if 0);
  `source`: that split's source when the caller has it already."""
  from vision_core import data  # pylint: disable=g-import-not-at-top
  source = data.get_source(dataset, split) if source is None else source
  resize = data.parse_preprocess(palette_lib.preprocess_spec(image_size))
  n = min(limit, len(source)) if limit else len(source)
  idx = np.random.default_rng(0).permutation(len(source))[:n]
  records = [resize(source[int(i)]) for i in idx]
  images = np.stack([r['image'] for r in records])
  labels = np.array([r['label'] for r in records])
  return np.asarray(palette_lib.quantize(images, centers)), labels, source.num_classes


def _check_args(args: argparse.Namespace, outputs: dict[str, str]) -> None:
  """Checks counts and outputs before any work (an existing output used to be found only
  after all the features and fits, and after probe.md had been written)."""
  for flag in ('train_examples', 'test_examples'):
    if getattr(args, flag) < 0:
      raise UserInputError(f'--{flag}={getattr(args, flag)}: expected >= 0 (0: all).')
  if args.steps < 1 or not args.l2 or min(args.l2) < 0:
    raise UserInputError(f'--steps={args.steps}, --l2={args.l2}: expected at least one step '
                         'and L2 strengths >= 0.')
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise UserInputError(f'--out={args.out}: is a file; expected a directory for the outputs.')
  scratch = [_feature_path(args, split) for split in ('train', 'test')]
  for path in list(outputs.values()) + (scratch if args.features_on_disk else []):
    io.check_can_write(path, overwrite=args.force)


def _check_layers(layers: Sequence[int] | None, num_blocks: int) -> list[int]:
  """`--layers` checked against the model: sorted, duplicates dropped; None: all."""
  if layers is None:
    return list(range(num_blocks + 1))
  bad = [i for i in layers if not 0 <= i <= num_blocks]
  if bad:
    raise UserInputError(f'--layers={" ".join(map(str, bad))}: expected layers 0 to {num_blocks} '
                         f'(the model has {num_blocks} blocks; {num_blocks} is ln_f).')
  return sorted(set(layers))


def _feature_path(args: argparse.Namespace, split: str) -> str:
  return os.path.join(args.out, f'features_{split}.npy')


def _feature_file(args: argparse.Namespace, split: str, shape) -> np.ndarray | None:
  """With --features_on_disk, a float32 `.npy` of `shape` in --out, mapped into memory: the
  operating system pages it out, so only the layer being fitted need fit in RAM."""
  if not args.features_on_disk:
    return None
  return np.lib.format.open_memmap(_feature_path(args, split), mode='w+', dtype=np.float32,
                                   shape=shape)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='igpt_jax.probe', description=__doc__.split('\n')[0])
  parser.add_argument('--params', required=True, type=io.path_arg,
                      help='.npz, TF checkpoint or HF save')
  parser.add_argument('--palette', required=True, type=io.path_arg,
                      help="[512, 3] .npy palette, or HF's preprocessor_config.json")
  parser.add_argument('--dataset', required=True, type=io.path_arg,
                      help='image folder or TFDS name')
  parser.add_argument('--tfds_data_dir', type=io.path_arg, default=None,
                      help='where a TFDS --dataset is prepared (default: TFDS\'s own)')
  parser.add_argument('--skip_bad_images', action='store_true',
                      help='image folders: skip (and count) unreadable files instead of '
                      'stopping at the first')
  parser.add_argument('--image_size', type=int, default=None,
                      help="image side in pixels; default: the model's (sqrt of n_ctx)")
  parser.add_argument('--train_examples', type=int, default=10_000, help='0: all')
  parser.add_argument('--test_examples', type=int, default=10_000, help='0: all')
  parser.add_argument('--l2', type=float, nargs='+', default=[1e-4, 1e-3, 1e-2, 1e-1],
                      help='L2 strengths tried (chosen on a held-out tenth of train)')
  parser.add_argument('--steps', type=int, default=300, help='L-BFGS iterations per fit')
  parser.add_argument('--layers', type=int, nargs='+', default=None,
                      help='layers to probe (0 .. blocks - 1: a block\'s ln_1; blocks: ln_f); '
                      'only these features are kept. Default: all')
  parser.add_argument('--features_on_disk', action='store_true',
                      help='hold the features in .npy files in --out (removed at the end) '
                      'instead of memory')
  parser.add_argument('--out', required=True, type=io.path_arg,
                      help='directory for probe.json / .md / .png')
  parser.add_argument('--force', action='store_true', help='overwrite existing outputs')
  args = parser.parse_args(argv)
  with cli_errors('igpt_jax.probe'):
    outputs = {ext: os.path.join(args.out, f'probe.{ext}') for ext in ('md', 'json', 'png')}
    _check_args(args, outputs)
    from igpt_jax import checkpoint  # pylint: disable=g-import-not-at-top
    # The probe reads features only: HF saves without the LM head (ImageGPTModel) will do.
    params, model = checkpoint.load(args.params, need_lm_head=False)
    layers = _check_layers(args.layers, model.num_layers)
    args.image_size = igpt_model.image_side(args.image_size, model.n_ctx,
                                            flag='--image_size')
    centers = palette_lib.load_palette(args.palette, num_clusters=model.vocab_size)
    from vision_core import data  # pylint: disable=g-import-not-at-top
    sources = {split: data.get_source(args.dataset, split, data_dir=args.tfds_data_dir,
                                      skip_bad_images=args.skip_bad_images)
               for split in ('train', 'test')}
    # The probe's classes are the train split's; a test split may lack some of them.
    data.align_classes(sources['test'], sources['train'].class_names,
                       what=f'--dataset={args.dataset} split test')
    tr_tok, tr_lab, k = load_split(args.dataset, 'train', args.image_size,
                                    args.train_examples, centers, source=sources['train'])
    if k < 2 or len(tr_lab) < 2:
      raise UserInputError(f'--dataset={args.dataset}: the train split has {k} class(es) and '
                           f'{len(tr_lab)} example(s) used; a probe needs at least 2 of each.')
    te_tok, te_lab, _ = load_split(args.dataset, 'test', args.image_size,
                                    args.test_examples, centers, source=sources['test'])
    os.makedirs(args.out, exist_ok=True)
    try:
      feats = [extract_features(model, params, tok, layers=layers,
                                out=_feature_file(args, split, (len(layers), len(tok),
                                                                model.width)))
               for split, tok in (('train', tr_tok), ('test', te_tok))]
      rows = probe_layers(feats[0], tr_lab, feats[1], te_lab, num_classes=k,
                          l2_grid=tuple(args.l2), steps=args.steps, layer_ids=layers)
    finally:  # The disk-backed features are scratch: 15 GB for iGPT-L on 50,000 images.
      for split in ('train', 'test'):
        if args.features_on_disk and os.path.exists(_feature_path(args, split)):
          os.remove(_feature_path(args, split))
    table = format_table(rows, model.num_layers)
    with io.atomic_write(outputs['md'], 'w', overwrite=args.force) as f:
      f.write(table + '\n')
    with io.atomic_write(outputs['json'], 'w', overwrite=args.force) as f:
      json.dump(rows, f, indent=2)
    plot(rows, outputs['png'], overwrite=args.force)
    print(table)


if __name__ == '__main__':
  main()
