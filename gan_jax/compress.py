"""Image -> GAN latent -> small file. Library functions and the CLI.

    python -m gan_jax.compress IMAGES... -o OUTDIR [--generator G.npz] [--quantization 8bit]

Each image becomes OUTDIR/<name>.ganz (see `gan_jax.fileformat`), written atomically;
existing files are never replaced without --force, and input files are only read.
Transparent images (RGBA, grey + alpha, palette with transparency) are composited on white
first, as viewers show them and as the study does. The images (x R restarts) are searched
--batch-size at a time in one compiled program (`latent_search`), sharded over every device
(on a CPU, one device per core). An image's initial latents are a function of (--seed, its
pixels) only, and each image stops on its own plateau: it gets the same latent
whether compressed alone or with others, in any order or batch size, up to float rounding
(the generator's batched arithmetic rounds differently per batch size, and a long search
can amplify that into a different, about equally good, latent). A table reports bytes,
bits per pixel, compression ratios, PSNR, and Pillow JPEG at the same size.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
from typing import Sequence

import jax
import numpy as np

from gan_jax import fileformat, generators, latent_search, report
from vision_core import images as images_lib
from vision_core import mesh as mesh_lib
from vision_core import seeds
from vision_core.errors import UserInputError, cli_errors
from vision_core.io import check_can_write, check_not_an_input, path_arg

SUFFIX = '.ganz'
_WEIGHTS = os.path.join(os.path.dirname(__file__), 'weights')
# The shipped generators (docs/results.md says how each was trained). The 32 px CIFAR-10
# one is the default where present, else the 28 px MNIST one.
DEFAULT_GENERATOR = next(
    (os.path.join(_WEIGHTS, n) for n in ('dcgan_cifar10_32.npz', 'dcgan_mnist_28.npz')
     if os.path.exists(os.path.join(_WEIGHTS, n))),
    os.path.join(_WEIGHTS, 'dcgan_mnist_28.npz'))


def prepare(image_uint8, generator: generators.Generator, *, resize: bool = False,
            source: str = 'image') -> np.ndarray:
  """`[H, W, C]` uint8 -> `[S, S, C_gen]` uint8 the generator can make.

  Grey/RGB is converted to the generator's channels; a size other than S x S is an error
  naming `source` unless `resize` (Pillow bicubic).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image_uint8)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3, 4) or image.dtype != np.uint8:
    raise UserInputError(f'{source}: expected a uint8 image [H, W, 1|3|4], got '
                         f'{image.dtype} {image.shape}.')
  s, c = generator.image_size, generator.channels
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  pil = pil.convert('L' if c == 1 else 'RGB')
  if pil.size != (s, s):
    if not resize:
      raise UserInputError(
          f'{source}: image is {pil.size[0]}x{pil.size[1]} pixels, but the generator '
          f'makes {s}x{s}; pass --resize (resize=True) to resize it, or crop it first.')
    pil = pil.resize((s, s), Image.BICUBIC)
  out = np.asarray(pil, np.uint8)
  return out[..., None] if out.ndim == 2 else out


def read_input(path: str) -> np.ndarray:
  """An image file as `[H, W, 3]` uint8, upright (EXIF), transparency composited on white.

  Pillow's RGBA -> RGB conversion drops alpha and keeps whatever colour the transparent
  pixels store (often black), which is not the picture a viewer shows; so, as the study
  and `vit_jax.assess` do, alpha is composited on a white background. Opaque images come
  back exactly as `images_lib.read_image` reads them.
  """
  return images_lib.composite_alpha(images_lib.read_image(path, mode='RGBA'), 255)


def input_channels(path: str) -> int:
  """Channels stored in an image file: 1 grey (8 or 16 bit), 2 grey+alpha, 3, 4 (RGBA, CMYK);
  palette images count as the RGB(A) they expand to. For the raw-pixel-size ratio.

  The EXIF orientation is not applied here: turning changes no channel count (the pixels
  themselves are read by `images_lib.read_image`, which applies it)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(path) as im:
    if im.mode in ('P', 'PA'):
      return 4 if im.mode == 'PA' or 'transparency' in im.info else 3
    return len(im.getbands())


def reconstruct(generator: generators.Generator, latent) -> np.ndarray:
  """G(latent) as uint8 `[S, S, C]`: one latent at a time, the decoder's exact path."""
  image = generator.generate(np.asarray(latent, np.float32).reshape(1, -1))
  return report.to_uint8(jax.device_get(image))[0]


def check_targets(targets, generator: generators.Generator) -> np.ndarray:
  """`targets` as a `[B, S, S, C]` uint8 array of the generator's size and channels, else a
  `UserInputError` saying what differs (and `prepare`, which converts one image). Without
  it, float [0, 1] or 16-bit pixels were fitted as near-black or over-bright targets."""
  targets = np.asarray(targets)
  s, c = generator.image_size, generator.channels
  if targets.dtype != np.uint8:
    span = (f' in [{targets.min():.4g}, {targets.max():.4g}]'
            if targets.size and np.issubdtype(targets.dtype, np.number) else '')
    raise UserInputError(
        f'compress: expected uint8 images (0..255), got {targets.dtype}{span}; e.g. '
        '(x * 255).round().astype(np.uint8) for floats in [0, 1], or prepare(image, '
        'generator) per image.')
  if targets.ndim != 4 or not len(targets) or targets.shape[1:] != (s, s, c):
    raise UserInputError(
        f'compress: expected a batch [B >= 1, {s}, {s}, {c}] (the generator makes {s}x{s} '
        f'with {c} channel(s)), got {targets.shape}; prepare(image, generator, resize=True) '
        'converts one [H, W, C] image.')
  return targets


def search_latents(targets_uint8, generator: generators.Generator,
                   config: latent_search.SearchConfig, *, mesh=None, features_fn=None
                   ) -> latent_search.SearchResult:
  """Runs the compiled latent search on `[B, S, S, C]` uint8 targets (padded for the mesh).

  Each image's initial latents are keyed by (config.seed, a hash of its uint8 pixels,
  `latent_search.image_ids`) and each image stops on its own plateau, so its latent is the
  same whether it is searched alone or with others, in any row, up to float rounding (the
  generator rounds differently per batch size; a long search can amplify that). Padding
  rows for the mesh are copies of the last image and are dropped.
  """
  targets_uint8 = check_targets(targets_uint8, generator)
  ids = latent_search.image_ids(targets_uint8)
  targets = images_lib.to_model_range(targets_uint8)  # [-1, 1]: the generator's range.
  b = len(targets)
  if b == 1:  # One image on one device: padding it for the mesh would only add copies.
    mesh = None
  n = mesh_lib.data_size(mesh) if mesh is not None else 1
  padded = -(-b // n) * n
  if padded != b:  # Copies of the last image (and its id): rows the caller never sees.
    targets = np.concatenate([targets, np.repeat(targets[-1:], padded - b, axis=0)])
    ids = np.concatenate([ids, np.repeat(ids[-1:], padded - b, axis=0)])
  search = _cached_search(generator, config, mesh, features_fn)
  result = jax.device_get(search(generator.params, targets, ids))
  return latent_search.SearchResult(result.latents[:b], result.loss[:b],
                                    result.restart_losses[:b], result.curves[:, :b],
                                    result.steps_run[:b])


_SEARCHES = {}


@functools.lru_cache(maxsize=1)
def _default_mesh():
  """All devices on 'data' (one mesh per process, so compiled searches are reused)."""
  return mesh_lib.make_mesh() if jax.device_count() > 1 else None


def _cached_search(generator, config, mesh, features_fn):
  key = (generator.identity, config, id(mesh), id(features_fn))
  if key not in _SEARCHES:
    _SEARCHES[key] = latent_search.make_latent_search(
        generator.apply, latent_dim=generator.latent_dim, config=config, mesh=mesh,
        features_fn=features_fn)
  return _SEARCHES[key]


def compress(targets_uint8, generator: generators.Generator, *,
             config: latent_search.SearchConfig = latent_search.SearchConfig(),
             quantization: str = '8bit', image_sizes: Sequence[tuple[int, int]] | None = None,
             mesh=None, features_fn=None):
  """`[B, S, S, C]` uint8 -> (file bytes per image, reconstructions uint8, SearchResult).

  The reconstructions are exactly what `gan_jax.decompress` will produce from the files.
  Image i's result depends on (config, its pixels), not on the other images or on i (see
  `search_latents`), so callers may split a set into batches of any size.
  """
  targets_uint8 = check_targets(targets_uint8, generator)
  result = search_latents(targets_uint8, generator, config, mesh=mesh,
                          features_fn=features_fn)
  files, recons = [], []
  for i, latent in enumerate(result.latents):
    size = image_sizes[i] if image_sizes else targets_uint8.shape[1:3]
    data = fileformat.encode(latent, generator_id=generator.identity,
                             quantization=quantization, image_size=tuple(size))
    files.append(data)
    recons.append(reconstruct(generator, fileformat.decode(data).latent))
  return files, np.stack(recons), result


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog='python -m gan_jax.compress', description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('images', nargs='+', type=path_arg,
                 help='image files (PNG, JPEG, ...), or folders of them (not recursive)')
  p.add_argument('-o', '--output', required=True, type=path_arg, help='output directory')
  p.add_argument('--generator', default=DEFAULT_GENERATOR, type=path_arg,
                 help='generator checkpoint (.npz)')
  p.add_argument('--quantization', default='8bit', help='float32, float16 or Kbit (1..16)')
  p.add_argument('--steps', type=int, default=500)
  p.add_argument('--restarts', type=int, default=4)
  p.add_argument('--optimizer', default='sgd', choices=('sgd', 'adam'))
  p.add_argument('--learning-rate', type=float, default=None)
  p.add_argument('--seed', type=int, default=0,
                 help='initial latents: a function of (seed, image pixels), in [0, 2**32)')
  p.add_argument('--batch-size', type=int, default=32, help='images searched at once')
  p.add_argument('--resize', action='store_true', help='resize images to the generator size')
  p.add_argument('--perceptual-weight', type=float, default=0.0)
  p.add_argument('--vit-model', default='',
                 help='zoo name of the --vit-checkpoint ViT (e.g. ViT-B_16); default: the '
                 'model.json beside it (as vit_jax.main writes), else ViT-B_16')
  p.add_argument('--vit-checkpoint', type=path_arg,
                 help='ViT .npz for the perceptual term, e.g. the shipped '
                 'vit_jax/weights/vit_cifar10/model.npz')
  p.add_argument('--report', type=path_arg,
                 help='also write the per-image numbers as JSON here')
  p.add_argument('--force', action='store_true', help='overwrite existing outputs')
  return p


def main(argv=None) -> None:
  args = _parser().parse_args(argv)
  # On a CPU, one device per core: the batch's images are split over the cores (faster than
  # one device; docs/benchmarks.md). Before anything starts JAX.
  mesh_lib.one_cpu_device_per_core()
  with cli_errors('gan_jax.compress'):
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    fileformat.Quantization.parse(args.quantization)
    seeds.check_seed(args.seed, field='--seed')
    args.images = images_lib.expand_inputs(args.images, kind='image file')
    outputs = [os.path.join(args.output, os.path.splitext(os.path.basename(p))[0] + SUFFIX)
               for p in args.images]
    dupes = sorted({o for o in outputs if outputs.count(o) > 1})
    if dupes:
      raise UserInputError(f'several inputs would write {dupes}: '
                           f'{[p for p, o in zip(args.images, outputs) if o in dupes]}; '
                           'compress them into different folders or rename them.')
    if args.report:  # --force must not let the JSON replace an input or a .ganz of this run.
      check_not_an_input(args.report, args.images + outputs + [args.generator],
                         flag='--report')
    for out in outputs + ([args.report] if args.report else []):
      check_can_write(out, overwrite=args.force)  # Fail before any work is done.
    generator = generators.load(args.generator)
    features_fn = None
    if args.perceptual_weight:
      if not args.vit_checkpoint:
        raise UserInputError('--perceptual-weight needs --vit-checkpoint (a ViT .npz).')
      from gan_jax import perceptual  # pylint: disable=g-import-not-at-top
      features_fn = perceptual.load_vit_features(args.vit_model, args.vit_checkpoint)
    config = latent_search.SearchConfig(
        steps=args.steps, restarts=args.restarts, optimizer=args.optimizer,
        learning_rate=args.learning_rate, perceptual_weight=args.perceptual_weight,
        seed=args.seed)
    mesh = _default_mesh()
    originals, targets = [], []
    for path in args.images:  # Every image is checked before any search or write.
      try:
        originals.append(read_input(path))
        targets.append(prepare(originals[-1], generator, resize=args.resize, source=path))
      except (UserInputError, FileNotFoundError) as e:
        if len(args.images) == 1:
          raise
        raise UserInputError(f'{e} No .ganz file was written; leave {path} out to compress '
                             'the others.') from None
    rows = []
    step = max(1, args.batch_size)
    for start in tqdm(range(0, len(targets), step), desc='compress', unit='batch'):
      chunk = slice(start, start + step)
      files, recons, result = compress(
          np.stack(targets[chunk]), generator, config=config,
          quantization=args.quantization, mesh=mesh, features_fn=features_fn,
          image_sizes=[im.shape[:2] for im in originals[chunk]])
      for i, data in enumerate(files):
        k = start + i
        fileformat.write(outputs[k], data, overwrite=args.force)
        row = report.rate_row(compressed_bytes=len(data), target_uint8=targets[k],
                              reconstruction_uint8=recons[i],
                              input_file_bytes=os.path.getsize(args.images[k]),
                              input_shape=(*originals[k].shape[:2],
                                           input_channels(args.images[k])))
        rows.append({'image': args.images[k], 'output': outputs[k],
                     'loss': float(result.loss[i]), 'steps': int(result.steps_run[i]), **row})
    _print_table(rows, generator, args.quantization)
    if args.report:
      from vision_core.io import atomic_write  # pylint: disable=g-import-not-at-top
      with atomic_write(args.report, 'w', overwrite=args.force) as f:
        json.dump(rows, f, indent=2)


def _print_table(rows, generator, quantization) -> None:
  s = generator.image_size
  print(f'generator {generator.identity[:16]} ({s}x{s}, latent {generator.latent_dim}), '
        f'{quantization} latents; bpp per pixel of the {s}x{s} reconstruction')
  print(f'{"image":28s} {"bytes":>6s} {"bpp":>6s} {"x raw":>7s} {"x file":>7s} '
        f'{"PSNR":>6s} | {"JPEG B":>6s} {"bpp":>6s} {"PSNR":>6s}')
  for r in rows:
    ratio_file = f'{r["ratio_vs_input_file"]:7.1f}' if r['ratio_vs_input_file'] else '      -'
    jpeg_note = '' if r['jpeg_fits'] else '  (JPEG cannot get this small; quality 1 shown)'
    print(f'{os.path.basename(r["image"])[:28]:28s} {r["bytes"]:6d} {r["bpp"]:6.3f} '
          f'{r["ratio_vs_raw_pixels"]:7.1f} {ratio_file} {r["psnr"]:6.2f} | '
          f'{r["jpeg_bytes"]:6d} {r["jpeg_bpp"]:6.3f} {r["jpeg_psnr"]:6.2f}{jpeg_note}')


if __name__ == '__main__':
  main(sys.argv[1:])
