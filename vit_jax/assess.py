r"""The assessment report: ViT-Score, SSIM, MSE, PSNR, FID and BRISQUE for image pairs.

  python -m vit_jax.assess --originals DIR --reconstructions DIR --checkpoint VIT.npz \
      [--model ViT-B_16] [--compressed DIR] [--out DIR] [--resize] [--force] \
      [--alpha-background 255] \
      [--brisque-model brisque_model_live.yml --brisque-range brisque_range_live.yml]

Pairs images by file name (extension ignored), scores each pair and writes `report.md`,
`report.csv` and `report.png` (original | reconstruction, scores under each pair) into
`--out`, one row per image as in the study's summary table; with `--compressed`, the
compression ratio and bits per pixel of each compressed file. FID is reported once for the
whole set (a distance between two distributions is not defined per image). Nothing is
written until every score is computed; existing reports are kept unless `--force`.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys

import numpy as np

from vision_core.errors import UserInputError, cli_errors
from vision_core.io import atomic_write, check_can_write, check_not_an_input, path_arg
from vit_jax import assess_io

OUTPUTS = ('report.md', 'report.csv', 'report.png')


def _group_by_shape(pairs):
  groups = collections.defaultdict(list)
  for i, p in enumerate(pairs):
    groups[p.original.shape].append(i)
  return groups.values()


def score_pairs(pairs, *, model, params, image_size, k, brisque_files=None, mesh=None):
  """Per-pair scores (dict of name -> `[n]` arrays) and set-level FIDs (dict)."""
  from vit_jax import metrics  # pylint: disable=g-import-not-at-top
  n = len(pairs)
  cols = collections.defaultdict(lambda: np.full(n, np.nan))
  prelogits = [[None] * n, [None] * n]  # of the originals, of the reconstructions
  for idx in _group_by_shape(pairs):
    for fine in (False, True):  # 8-bit pairs, then pairs with a 16-bit file (float levels).
      sub = [i for i in idx if (pairs[i].original_levels is not None) == fine]
      if sub:
        a, b = (np.stack(side) for side in zip(*(pairs[i].pixels() for i in sub)))
        cols['ssim'][sub] = np.asarray(metrics.ssim(a, b, data_range=255.0))
        cols['mse'][sub] = np.asarray(metrics.mse(a, b))
        cols['psnr'][sub] = np.asarray(metrics.psnr(a, b, data_range=255.0))
        cols['pixel_row_fid'][sub] = np.asarray(metrics.pixel_row_fid(a, b))
    a = np.stack([pairs[i].original for i in idx])
    b = np.stack([pairs[i].reconstruction for i in idx])
    rgb_a, rgb_b = (np.repeat(x, 3, -1) if x.shape[-1] == 1 else x for x in (a, b))
    vit = metrics.vit_scores(rgb_a, rgb_b, model, params, k, image_size=image_size, mesh=mesh,
                             return_prelogits=True)
    for j, i in enumerate(idx):
      prelogits[0][i] = vit['prelogits_original'][j]
      prelogits[1][i] = vit['prelogits_reconstruction'][j]
    cols['vit_score'][idx] = vit['top_k']
    cols['vit_score_weighted'][idx] = vit['weighted']
    cols['vit_cosine'][idx] = vit['cosine']
    if brisque_files:
      cols['brisque_original'][idx] = metrics.brisque(a, *brisque_files, mesh=mesh)
      cols['brisque_reconstruction'][idx] = metrics.brisque(b, *brisque_files, mesh=mesh)
  for i, p in enumerate(pairs):
    if p.compressed_path:
      size = os.path.getsize(p.compressed_path)
      h, w, c = p.original.shape
      cols['compression_ratio'][i] = h * w * c / size  # Against the 8-bit raw image.
      cols['bpp'][i] = 8 * size / (h * w)
  return dict(cols), _set_fid(pairs, *(np.stack(side).astype(np.float64)
                                       for side in prelogits))


def _set_fid(pairs, prelogits_a, prelogits_b):
  """FID between the set of originals and of reconstructions: on the ViT pre-logits that
  scored them (`[n, D]` each; originals of any sizes), and on raw pixels (one size only)."""
  from vit_jax import metrics  # pylint: disable=g-import-not-at-top
  out = {}
  if len(pairs) < 2:
    return out
  shapes = {p.original.shape for p in pairs}
  out['vit_prelogits'] = metrics.fid(prelogits_a, prelogits_b)
  if len(shapes) == 1:
    a, b = (np.stack(side).reshape(len(pairs), -1).astype(np.float64)
            for side in zip(*(p.pixels() for p in pairs)))
    out['raw_pixels'] = metrics.fid(a, b)
  return out


def load_classifier(path: str, model_name: str | None):
  """(model, params, image_size, model name) of a ViT checkpoint.

  A checkpoint written by `vit_jax.main` (the shipped CIFAR-10 ViT among them) has a
  `model.json` beside it that describes the model; it is used unless `model_name` is given.
  Otherwise the model is inferred from the official-layout shapes (or `model_name`): the
  policy of `vit_jax.checkpoint.load_for_inference`.
  """
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  loaded = checkpoint.load_for_inference(path, model_name=model_name)
  return loaded.model, loaded.params, loaded.resolution, loaded.model_name


def parse_args(argv):
  parser = argparse.ArgumentParser(prog='vit_jax.assess', description=__doc__.split('\n')[0])
  parser.add_argument('--originals', required=True, type=path_arg, help='folder of original images')
  parser.add_argument('--reconstructions', required=True, type=path_arg,
                      help='folder of reconstructions, same file names (any extension)')
  parser.add_argument('--checkpoint', required=True, type=path_arg,
                      help='ViT classifier .npz (official layout) or HF ViT save folder')
  parser.add_argument('--model', help='model name (e.g. ViT-B_16); default: the model.json '
                      'beside the checkpoint, else inferred from its shapes')
  parser.add_argument('--compressed', type=path_arg, help='folder of compressed files, same names')
  parser.add_argument('--out', default='assessment', type=path_arg,
                      help='output folder (default: assessment)')
  parser.add_argument('--resize', action='store_true',
                      help='resize reconstructions of another size to the original (bicubic)')
  parser.add_argument('--force', action='store_true', help='overwrite existing reports')
  parser.add_argument('--k', type=int, default=100,
                      help="top-k classes of the ViT-Score, at most the head's classes "
                      '(default 100, for ImageNet heads; the study uses 3 with its '
                      '10-class ViT)')
  parser.add_argument('--alpha-background', type=int, default=255, metavar='GREY',
                      help='grey level (0-255) that transparent images are composited on '
                      'before scoring (default 255, white, as the study does)')
  parser.add_argument('--brisque-model', type=path_arg,
                      help='BRISQUE SVR model (OpenCV YAML or libsvm)')
  parser.add_argument('--brisque-range', type=path_arg, help='BRISQUE feature range file')
  args = parser.parse_args(argv)
  if not 0 <= args.alpha_background <= 255:
    parser.error(f'--alpha-background {args.alpha_background}: expected a grey level 0..255.')
  if bool(args.brisque_model) != bool(args.brisque_range):
    raise UserInputError('--brisque-model and --brisque-range go together (the SVR model and '
                         'its feature range table).')
  return args


def main(argv=None) -> None:
  args = parse_args(sys.argv[1:] if argv is None else argv)
  for name in OUTPUTS:  # Refuse early, before hours of scoring.
    check_can_write(os.path.join(args.out, name), overwrite=args.force)
  from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
  checkpoint.check_exists(args.checkpoint, label=f'--checkpoint {args.checkpoint}')
  pairs, ignored = assess_io.load_pairs(args.originals, args.reconstructions,
                                        resize=args.resize, compressed=args.compressed,
                                        alpha_background=args.alpha_background)
  read = [args.checkpoint, args.brisque_model, args.brisque_range] + [
      p for pair in pairs for p in (pair.original_path, pair.reconstruction_path,
                                    pair.compressed_path)]
  for name in OUTPUTS:  # --force replaces old reports, never a file this run reads.
    check_not_an_input(os.path.join(args.out, name), read, flag='--out')
  model, params, image_size, model_name = load_classifier(args.checkpoint, args.model)
  num_classes = int(np.shape(params['head']['bias'])[-1])
  if not 1 <= args.k <= num_classes:
    raise UserInputError(f'--k {args.k}: expected 1 <= k <= {num_classes}, the classes of '
                         f"{args.checkpoint}'s head (pass e.g. --k {max(1, num_classes // 3)}).")
  brisque_files = (args.brisque_model, args.brisque_range) if args.brisque_model else None
  cols, fids = score_pairs(pairs, model=model, params=params, image_size=image_size, k=args.k,
                           brisque_files=brisque_files)
  from vit_jax import assess_report  # pylint: disable=g-import-not-at-top
  info = dict(model=model_name, checkpoint=args.checkpoint, image_size=image_size, k=args.k,
              num_classes=num_classes, ignored=ignored,
              brisque=brisque_files)
  contents = {
      'report.md': assess_report.markdown(pairs, cols, fids, info).encode(),
      'report.csv': assess_report.csv_text(pairs, cols).encode(),
      'report.png': assess_report.figure_png(pairs, cols),
  }
  # Every report is written to its temporary file before any is renamed into place, so a
  # failed write (a full disk) leaves the old set whole instead of a new report.md beside an
  # old report.csv; what is left is the moment of the three renames.
  with contextlib.ExitStack() as stack:
    for name in OUTPUTS:
      stack.enter_context(atomic_write(os.path.join(args.out, name), 'wb',
                                       overwrite=args.force)).write(contents[name])
  print(f'wrote {", ".join(os.path.join(args.out, n) for n in OUTPUTS)} ({len(pairs)} pairs)')


if __name__ == '__main__':
  with cli_errors('vit_jax.assess'):
    main()
