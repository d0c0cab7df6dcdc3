"""The ViT-assisted compression study, end to end: `python -m gan_jax.study`.

  python -m gan_jax.study [--config configs/study.py:PRESET] [--out DIR] [--force]
      [--config.FIELD=VALUE ...]

Images (default: four `skimage.data` images) are compressed to GAN latents with the
compiled latent search (`gan_jax.compress`: every image x restart of a batch of
`batch_size` in one program; an image's initial latents depend on (seed, its pixels) only,
so batching changes no result beyond float rounding), written
as `.ganz` files, decompressed from those files, and scored against the originals with the
ViT-Score, SSIM, MSE, PSNR, raw-pixel FID, BRISQUE (when its model files are given), bits
per pixel and compression ratio, beside Pillow JPEG at the same file size. The output
folder holds report.md, report.csv, figure.png, study.json and the images and files:

  DIR/originals/NAME.png  DIR/compressed/NAME.ganz  DIR/reconstructions/NAME.png
  DIR/jpeg/NAME.jpg

Everything is written into a hidden staging folder beside DIR and renamed onto DIR only
when complete, so Ctrl-C or an error leaves no half-written report or compressed file. An
existing DIR is never replaced without --force (and never one that is not a study folder).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import numpy as np

from gan_jax import study_images, study_report, study_scores
from vision_core import folders
from vision_core import seeds
from vision_core.errors import UserInputError
import vit_jax
from vit_jax import checkpoint as vit_checkpoint

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_GENERATOR = os.path.join(PACKAGE_ROOT, 'gan_jax', 'weights', 'dcgan_cifar10_32.npz')
DEFAULT_VIT = vit_jax.SHIPPED_CIFAR10_VIT
MARKER = 'study.json'


def check_output(out: str, *, force: bool) -> None:
  """Refuses an existing `out` unless --force, and never replaces a non-study folder."""
  folders.check_output_folder(out, force=force, what='a study output folder', not_ours=lambda d: (
      None if os.path.isfile(os.path.join(d, MARKER)) else f'no {MARKER}'))


def _publish(staging: str, out: str, *, force: bool) -> None:
  """Renames the complete staging folder onto `out` (replacing an old study if forced)."""
  check_output(out, force=force)
  folders.publish_folder(staging, out)


def _save_png(path: str, image) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image)
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)


def _resolve_paths(config) -> tuple[str, str]:
  if config.user_paths_required:
    missing = [f for f in ('generator', 'vit_checkpoint', 'images') if not config[f]]
    if missing:
      raise UserInputError(
          f'preset {config.preset}: give ' + ', '.join(f'--config.{m}=...' for m in missing) +
          ' (see docs/study.md for where to download and how to convert the weights).')
  generator = config.generator or DEFAULT_GENERATOR
  vit = config.vit_checkpoint or DEFAULT_VIT
  for field, path in (('generator', generator), ('vit_checkpoint', vit)):
    present = (vit_checkpoint.is_present(path) if field == 'vit_checkpoint'
               else os.path.isfile(path))
    if os.path.isdir(path) and not present:
      raise UserInputError(f'{field}: {path} is a folder; expected an .npz file' + (
          ' or an HF ViT save_pretrained folder.' if field == 'vit_checkpoint' else '.'))
    if not present:
      raise UserInputError(f'{field}: {path} does not exist.')
  return generator, vit


def run(config, *, out: str | None = None, force: bool = False, progress: bool = True,
        on_stage=None) -> dict:
  """Runs the study described by `config` (configs/study.py); returns the output paths.

  `on_stage(name)` is called before each stage, the last one being 'publish' (the command
  line checks for a signal there; tests use it to simulate Ctrl-C).
  """
  import jax  # pylint: disable=g-import-not-at-top
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  from gan_jax import compress as compress_lib  # pylint: disable=g-import-not-at-top
  from gan_jax import decompress as decompress_lib  # pylint: disable=g-import-not-at-top
  from gan_jax import fileformat, generators, latent_search  # pylint: disable=g-import-not-at-top
  from gan_jax import report as rate_lib  # pylint: disable=g-import-not-at-top
  from vision_core import mesh as mesh_lib  # pylint: disable=g-import-not-at-top

  out = out or config.out
  check_output(out, force=force)  # Fail before any work is done.
  seeds.check_seed(config.seed, field='--config.seed')
  fileformat.Quantization.parse(config.quantization)
  study_scores.brisque_files(config.brisque_model, config.brisque_range)  # fail early
  start_time = time.time()
  generator_path, vit_path = _resolve_paths(config)
  generator = generators.load(generator_path)
  classifier = study_scores.load_classifier(vit_path, model_name=config.vit_model,
                                            resolution=config.vit_resolution)
  k = int(config.vit_score_k)
  classifier.check_k(k)
  images = study_images.load(config.images, size=generator.image_size,
                             channels=generator.channels,
                             alpha_background=config.alpha_background)
  names = [im.name for im in images]
  targets = np.stack([im.pixels for im in images])
  search = latent_search.SearchConfig(
      steps=config.steps, restarts=config.restarts, optimizer=config.optimizer,
      learning_rate=config.learning_rate or None, stop_patience=config.stop_patience,
      seed=config.seed)
  search.validate()
  mesh = mesh_lib.make_mesh() if jax.device_count() > 1 else None
  batch = max(1, int(config.batch_size))
  chunks = [slice(s, s + batch) for s in range(0, len(targets), batch)]
  stage = on_stage or (lambda name: None)

  with folders.staging_folder(out) as staging:
    subfolders = {k_: os.path.join(staging, k_) for k_ in
               ('originals', 'compressed', 'reconstructions', 'jpeg')}
    for folder in subfolders.values():
      os.makedirs(folder)
    bar = tqdm(total=len(chunks) + 4, desc='study', unit='stage', disable=not progress)
    gan_bytes, search_seconds, losses = [], 0.0, []
    for chunk in chunks:
      stage('compress')
      bar.set_postfix_str(f'latent search {chunk.start + 1}-{min(chunk.stop, len(targets))}'
                          f' of {len(targets)}')
      t = time.time()
      files, _, result = compress_lib.compress(
          targets[chunk], generator, config=search, quantization=config.quantization,
          mesh=mesh)
      search_seconds += time.time() - t
      losses.extend(float(x) for x in result.loss)
      for name, data in zip(names[chunk], files):
        fileformat.write(os.path.join(subfolders['compressed'], name + compress_lib.SUFFIX), data)
        gan_bytes.append(len(data))
      bar.update()

    stage('decompress')
    bar.set_postfix_str('decompress from the files')
    recons = []
    for name, original in zip(names, targets):
      path = os.path.join(subfolders['compressed'], name + compress_lib.SUFFIX)
      with open(path, 'rb') as f:
        recon = decompress_lib.decompress(f.read(), generator, source=path)
      recons.append(recon)
      _save_png(os.path.join(subfolders['originals'], name + '.png'), original)
      _save_png(os.path.join(subfolders['reconstructions'], name + '.png'), recon)
    recons = np.stack(recons)
    bar.update()

    stage('jpeg')
    bar.set_postfix_str('JPEG at the same size')
    jpegs, jpeg_bytes, jpeg_notes = [], [], []
    for name, original, nbytes in zip(names, targets, gan_bytes):
      fit = rate_lib.jpeg_at_size(original, nbytes)
      data = rate_lib.jpeg_bytes(original, fit['jpeg_quality'])
      with open(os.path.join(subfolders['jpeg'], name + '.jpg'), 'wb') as f:
        f.write(data)
      jpegs.append(rate_lib.decode_jpeg(data, generator.channels))
      jpeg_bytes.append(len(data))
      jpeg_notes.append(f'JPEG quality {fit["jpeg_quality"]}' + (
          '' if fit['jpeg_fits'] else ' (cannot get as small as the GAN file)'))
    jpegs = np.stack(jpegs)
    bar.update()

    stage('score')
    bar.set_postfix_str('ViT-Score, SSIM, PSNR, FID, BRISQUE')
    brisque, brisque_note = study_scores.brisque_files(config.brisque_model,
                                                       config.brisque_range)
    original_paths = [os.path.join(out, 'originals', n + '.png') for n in names]
    gan_label = f'GAN latents ({config.quantization} .ganz)'
    jpeg_label = 'JPEG at the same size'
    sources = {
        gan_label: (recons, 'reconstructions', '.png', 'compressed', compress_lib.SUFFIX,
                    [list(filter(None, [im.note])) for im in images]),
        jpeg_label: (jpegs, 'jpeg', '.jpg', 'jpeg', '.jpg',
                     [list(filter(None, [im.note, n])) for im, n in zip(images, jpeg_notes)]),
    }
    methods = {}
    for label, (recon, sub, ext, csub, cext, notes) in sources.items():
      pairs = study_scores.make_pairs(
          names, targets, recon, original_paths=original_paths,
          reconstruction_paths=[os.path.join(out, sub, n + ext) for n in names],
          compressed_paths=[os.path.join(staging, csub, n + cext) for n in names],
          notes=notes)
      cols, fids = study_scores.score(pairs, classifier, k=k, brisque=brisque, mesh=mesh)
      methods[label] = (pairs, cols, fids)
    bar.update()

    stage('report')
    bar.set_postfix_str('report and figure')
    header = _header(config, generator, generator_path, classifier, vit_path, k, search,
                     brisque_note, targets.shape)
    info = dict(model=classifier.model_name, checkpoint=vit_path,
                image_size=classifier.resolution, k=k, num_classes=classifier.num_classes,
                ignored=[], brisque=brisque,
                colour=('the study\'s inputs were made 8-bit RGB (grey for a grey generator) '
                        'squares first, RGBA composited on grey level '
                        f'{config.alpha_background}; originals, reconstructions and JPEGs '
                        'are scored as those 8-bit pixels. Grey images are repeated to 3 '
                        'channels for the ViT.'))
    paths = study_report.write_all(staging, methods, header=header, info=info)
    summary = {
        'preset': config.preset, 'config': config.to_dict(), 'images': names,
        'generator': generator_path, 'generator_identity': generator.identity,
        'vit_checkpoint': vit_path, 'vit_classes': classifier.num_classes,
        'search_seconds': round(search_seconds, 2), 'latent_loss': losses,
        'total_seconds': round(time.time() - start_time, 2),
        'fid': {m: {k_: float(v) for k_, v in fids.items()}
                for m, (_, _, fids) in methods.items()},
        'mean': {m: {c: float(np.nanmean(v)) if np.isfinite(v).any() else None
                     for c, v in cols.items()} for m, (_, cols, _) in methods.items()},
    }
    with open(os.path.join(staging, MARKER), 'w', encoding='utf-8') as f:
      json.dump(summary, f, indent=2)
    bar.update()
    bar.close()
    stage('publish')
    _publish(staging, out, force=force)
  return {k_: os.path.join(out, os.path.basename(p)) for k_, p in paths.items()}


def _header(config, generator, generator_path, classifier, vit_path, k, search, brisque_note,
            shape) -> list[str]:
  n, size = shape[0], shape[1]
  lines = [
      f'- {n} images, {size}x{size}x{shape[3]}: `{config.images}`, center-cropped and resized '
      '(Pillow bicubic) to the generator\'s size; RGBA images are composited on grey level '
      f'{config.alpha_background} (255 = white) first.',
      f'- Generator `{generator_path}` ({generator.config.get("family")}, latent '
      f'{generator.latent_dim}, identity {generator.identity[:16]}); latent search: '
      f'{search.optimizer}, lr {search.learning_rate}, <= {search.steps} steps, best of '
      f'{search.restarts} restarts; latents stored as {config.quantization} `.ganz` files and '
      'the reconstructions decoded from those files.',
      f'- Classifier `{vit_path}` ({classifier.model_name}, {classifier.num_classes} classes, '
      f'{classifier.resolution} px): ViT-Score = shared top-{k} classes / {k} (chance level '
      f'{k / classifier.num_classes:.3f}).',
      '- JPEG: Pillow, the highest quality whose file is no larger than the `.ganz` file (when '
      'even quality 1 is larger, quality 1 is shown and the row says so).',
      '- FID raw pixels: set-level, each image one row of raw 0-255 values, as the study '
      'computed it (not an Inception FID).',
  ]
  if brisque_note:
    lines.append(f'- BRISQUE: absent ({brisque_note}).')
  return lines


def default_config_path() -> str:
  here = os.path.join(PACKAGE_ROOT, 'configs', 'study.py')
  return here if os.path.isfile(here) else os.path.join('configs', 'study.py')


def main() -> None:
  from absl import app, flags, logging  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from vision_core.errors import cli_errors  # pylint: disable=g-import-not-at-top
  from vision_core import config_cli  # pylint: disable=g-import-not-at-top
  with cli_errors('gan_jax.study'):
    if config_cli.config_spec(sys.argv[1:]) is None:
      # Defined with a default, the config flag applies argv's `--config.FIELD` overrides as
      # it is defined, so a misspelt field would fail right here with a traceback.
      config_cli.check_overrides(sys.argv[1:], config_cli.config_without_overrides(
          ['--config', default_config_path()]))
  config_flag = config_flags.DEFINE_config_file(
      'config', default_config_path(), 'configs/study.py:PRESET (default: the default preset)',
      lock_config=True)
  out_flag = flags.DEFINE_string('out', None, 'output folder (default: config.out)')
  force_flag = flags.DEFINE_bool('force', False, 'replace an existing study output folder')

  def _main(argv):
    del argv
    # Ctrl-C and `kill` (SIGTERM) unwind the run, so the staging folder is removed on the way
    # out. Both handlers are ours: Python does not install its Ctrl-C handler when SIGINT
    # arrives ignored from the parent. A KeyboardInterrupt raised where Python swallows
    # exceptions (a finaliser, a callback) would be lost, so the signal is also recorded and
    # acted on at the next stage, before anything is published.
    received = []

    def interrupt(signum, frame):
      del frame
      received.append(signum)
      raise KeyboardInterrupt

    def check_interrupted(stage_name):
      if received:
        raise KeyboardInterrupt(f'signal {received[0]} before stage {stage_name}')

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    with cli_errors('gan_jax.study'):
      paths = run(config_flag.value, out=out_flag.value, force=force_flag.value,
                  on_stage=check_interrupted)
      print(f'report:  {paths["markdown"]}\ntable:   {paths["csv"]}\nfigure:  '
            f'{paths["figure"]}')

  with cli_errors('gan_jax.study'):
    # The trainers' parsing: one-line errors, `~` expanded (`--config.images` holds a comma-
    # separated list of paths).
    config_cli.parse_flags(sys.argv, example='configs/study.py:default', path_flags=('out',),
                           comma_lists=('images',))
  logging.set_verbosity(logging.WARNING)  # not JAX's backend-probing INFO lines
  app.run(_main, argv=[sys.argv[0]], flags_parser=lambda argv: argv)


if __name__ == '__main__':
  main()
