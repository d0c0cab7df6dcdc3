"""Image completions and unconditional samples from the command line, as a PNG grid.

    python -m igpt_jax.complete --params runs/igpt/params.npz --palette runs/igpt/palette.npy \
        --images photos/ --keep_rows 16 --num 4 --out completions.png
    python -m igpt_jax.complete --params igpt-s/model.ckpt-1000000 \
        --palette kmeans_centers.npy --unconditional 8 --size 32 --out samples.png

With `--images` each image (resized to `--size`) is one row: original | kept rows |
`--num` completions (the top `--keep_rows` rows kept, the rest sampled with the KV-cached
sampler). With `--unconditional N`, N samples side by side. `--size` defaults to the model's
image side (n_ctx = size^2; the released models: 32). Nothing is overwritten without
`--force`.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from igpt_jax import checkpoint
from igpt_jax import model as igpt_model
from igpt_jax import palette as palette_lib
from igpt_jax import sample as igpt_sample
from vision_core import images as images_lib
from vision_core import io
from vision_core import seeds
from vision_core.errors import UserInputError, cli_errors


def _read_images(folder: str, size: int) -> np.ndarray:
  from vision_core import data  # pylint: disable=g-import-not-at-top
  paths = images_lib.list_images(folder)
  if not paths:
    raise UserInputError(f'{folder}: no images ({", ".join(images_lib.IMAGE_EXTENSIONS)}).')
  resize = data.parse_preprocess(f'resize({size})')
  return np.stack([resize({'image': images_lib.read_image(p)})['image'] for p in paths])


def _check_args(args: argparse.Namespace, model) -> int:
  """Checks the counts and `--size` against the model; returns the image side."""
  if args.unconditional is not None and args.unconditional < 1:
    raise UserInputError(f'--unconditional={args.unconditional}: expected at least 1 sample.')
  if args.images is not None and args.num < 1:
    raise UserInputError(f'--num={args.num}: expected at least 1 completion per image.')
  if args.batch < 1:
    raise UserInputError(f'--batch={args.batch}: expected at least 1 image sampled at once.')
  return igpt_model.image_side(args.size, model.n_ctx, flag='--size')


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='igpt_jax.complete', description=__doc__.split('\n')[0])
  parser.add_argument('--params', required=True, type=io.path_arg,
                      help='.npz, TF checkpoint or HF save')
  parser.add_argument('--palette', required=True, type=io.path_arg,
                      help="[512, 3] .npy palette, or HF's preprocessor_config.json")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--images', type=io.path_arg, help='folder of images to complete')
  source.add_argument('--unconditional', type=int, help='number of unconditional samples')
  parser.add_argument('--size', type=int, default=None,
                      help="image side in pixels; default: the model's (sqrt of n_ctx)")
  parser.add_argument('--keep_rows', type=int, default=None, help='default: half the rows')
  parser.add_argument('--num', type=int, default=4, help='completions per image')
  parser.add_argument('--temperature', type=float, default=1.0)
  parser.add_argument('--top_k', type=int, default=0)
  parser.add_argument('--top_p', type=float, default=1.0)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--batch', type=int, default=64,
                      help='completions sampled at once (memory), split over the devices '
                      '(rounded up to a multiple of them); the result does not depend on it')
  parser.add_argument('--out', required=True, type=io.path_arg, help='PNG to write')
  parser.add_argument('--force', action='store_true', help='overwrite --out')
  args = parser.parse_args(argv)
  with cli_errors('igpt_jax.complete'):
    io.check_can_write(args.out, overwrite=args.force)
    seeds.check_seed(args.seed, field='--seed')  # PRNGKey would take 2**32 + 5 for 5.
    params, model = checkpoint.load(args.params)
    centers = palette_lib.load_palette(args.palette, num_clusters=model.vocab_size)
    side = _check_args(args, model)
    kwargs = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    key = jax.random.PRNGKey(args.seed)
    n = side * side
    if args.unconditional is not None:
      sampler = igpt_sample.make_sampler(model, num_tokens=n, **kwargs)
      tokens = np.asarray(igpt_sample.sample_in_batches(  # the same for any --batch
          sampler, params, igpt_sample.row_keys(key, args.unconditional),
          np.zeros((args.unconditional, 0), np.int32), batch_size=args.batch))
      pictures = palette_lib.dequantize(tokens, centers)
      grid = igpt_sample.completion_grid(pictures[:1], pictures[None], keep_rows=0)
      grid = grid[:, 2 * (side + 2):]  # Drop the (empty) original / kept columns.
    else:
      originals = _read_images(args.images, side)
      tokens = palette_lib.quantize(originals, centers)
      keep = side // 2 if args.keep_rows is None else args.keep_rows
      out = igpt_sample.complete(model, params, key, tokens, image_shape=(side, side),
                                 keep_rows=keep, num_completions=args.num,
                                 batch_size=args.batch, **kwargs)
      grid = igpt_sample.completion_grid(palette_lib.dequantize(tokens, centers),
                                         palette_lib.dequantize(np.asarray(out), centers),
                                         keep_rows=keep)
    igpt_sample.save_png(args.out, grid, overwrite=args.force)
    print(f'wrote {args.out} ({grid.shape[1]}x{grid.shape[0]})')


if __name__ == '__main__':
  main()
