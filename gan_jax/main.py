"""Trains a DCGAN: `python -m gan_jax.main --config configs/gan.py:dcgan,mnist --workdir DIR`.

Uses the shared input pipeline (`vision_core.data`), orbax checkpoints with resume
(re-running with the same workdir continues from the newest checkpoint, data position
included; the run's config is kept in `DIR/config.json`, and a resume names the fields that
changed), a progress bar and metrics.jsonl/TensorBoard logs (`vision_core.metrics_log`).
Every `sample_every` steps the EMA generator's samples on fixed latents go to
`DIR/samples/step_NNNNNN.png`; every `fid_every` steps (and after the last step; `fid_every=0`
turns FID off) two Frechet distances between `fid_samples` EMA-generator samples and as many
training images are logged (split 'eval'):
  * `fid_vit`: FID on the pre-logits of the ViT classifier `config.fid_vit_checkpoint`
    (default: the shipped CIFAR-10 ViT; grey images are repeated to RGB and resized to its
    input, see `gan_jax.fid_vit`). The real statistics are cached in `DIR/fid_stats/`.
  * `pixel_fd`: the Frechet distance of Gaussians fitted to raw (downsampled) pixels.
At the end the EMA generator is exported to `DIR/generator.npz` (for gan_jax.compress) and
the last training metrics and FIDs to `DIR/final.json`. The same command run again on a
finished run (latest checkpoint at `total_steps`, `final.json` written for it) says that the
run is complete, prints `final.json` and changes nothing, without reading the data; a raised
`total_steps` continues the run. A run stopped after its last checkpoint but before writing
`final.json` (or with an older step's) is finished by the same command: it computes that
step's FIDs (FID on; one row each in metrics.jsonl) and writes `generator.npz` and
`final.json`, with that step's training metrics from metrics.jsonl.
DIR is a local folder or a bucket URI (`gs://bucket/run`, via `vision_core.io`).
A run refused before it trains (a bad field, dataset or preprocessing, an unreadable image
among the FID's real images or in the first batch) writes nothing to DIR.
"""

from __future__ import annotations

import math
import os
import sys

import jax
import numpy as np

from gan_jax import fid_vit as fid_vit_lib
from gan_jax import generators, report, train
from vision_core import config_cli, data, io, loop, metrics_log, run_config
from vision_core import mesh as mesh_lib
from vision_core.errors import UserInputError

_CONFIG, _WORKDIR = config_cli.define_run_flags(
    config_help='configs/gan.py:dcgan,DATASET',
    workdir_help='run folder (resumes if it has checkpoints)')


def _save_png(path: str, image: np.ndarray) -> None:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with io.atomic_write(path, 'wb', overwrite=True) as f:
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(f, format='PNG')


def _generate(sample_fn, params, z, batch: int = 500) -> np.ndarray:
  return np.concatenate([report.to_uint8(jax.device_get(sample_fn(params, z[i:i + batch])))
                         for i in range(0, len(z), batch)])


def _real_images(source, config) -> np.ndarray:
  """`config.fid_samples` training images as uint8, through the run's preprocessing.

  A fixed selection (permutation with seed 0) and fixed random ops (flips seeded per index),
  mapped back from [-1, 1] to uint8 as the generator's samples are.
  """
  from vision_core.data import preprocess as pp_lib  # pylint: disable=g-import-not-at-top
  pp = pp_lib.parse(config.preprocess)
  if len(source) < config.fid_samples:  # FID's bias grows as the sets shrink: say so.
    print(f'config.fid_samples={config.fid_samples}, but {config.dataset} ({config.split}) has '
          f'{len(source)} images: FID compares {config.fid_samples} samples with all '
          f'{len(source)}; values are not comparable with {config.fid_samples}-image FIDs.',
          file=sys.stderr)
  indices = np.random.default_rng(0).permutation(len(source))[:config.fid_samples]
  return np.stack([report.to_uint8(pp(source[int(i)], np.random.default_rng(int(i)))['image'])
                   for i in indices])


def _check_image_shape(source, config) -> None:
  """Raises UserInputError unless the preprocessed images, `config.generator` and
  `config.discriminator` agree on `[image_size, image_size, channels]`."""
  from vision_core.data import preprocess as pp_lib  # pylint: disable=g-import-not-at-top
  size, channels = config.generator.image_size, config.generator.channels
  if config.discriminator.image_size != size:
    raise UserInputError(
        f'config.discriminator.image_size={config.discriminator.image_size} but '
        f'config.generator.image_size={size}: the two must be equal.')
  shape = tuple(pp_lib.parse(config.preprocess)(source[0], np.random.default_rng(0))['image']
                .shape)
  if shape != (size, size, channels):
    raise UserInputError(
        f'config.dataset={config.dataset!r} with config.preprocess={config.preprocess!r} '
        f'gives images of shape {shape}, but config.generator has image_size={size}, '
        f'channels={channels}: expected {(size, size, channels)}.')


def _check_settings(config) -> None:
  """Raises `UserInputError` for settings outside their range, before any work.

  Without these, total_steps <= 0 wrote a workdir with a step-0 generator, negative rates,
  penalties or Adam betas trained nonsense (NaN losses included) without a word, and
  negative periods were taken for 0.
  """
  if config.fid_every > 0 and config.fid_samples < 2:
    raise UserInputError(f'config.fid_samples={config.fid_samples}: FID needs at least 2 '
                         'samples (fid_every=0 turns FID off).')
  rules = [('total_steps', '> 0'), ('lr_g', '>= 0'), ('lr_d', '>= 0'),
           ('adam_b1', 'in [0, 1)'), ('adam_b2', 'in [0, 1)'), ('r1_gamma', '>= 0'),
           ('gp_lambda', '>= 0'), ('discriminator.width', '> 0'),
           ('num_devices', '>= 0', '0: every device'),
           ('log_every', '>= 0', run_config.ZERO_LAST),
           ('sample_every', '>= 0', run_config.ZERO_LAST),
           ('checkpoint_every', '>= 0', run_config.ZERO_LAST),
           ('fid_every', '>= 0', '0: no FID')]
  if config.fid_every > 0 and config.get('fid_vit_checkpoint'):
    rules.append(('fid_batch_size', '> 0', "images per call of the FID's ViT"))
  run_config.check_fields(config, rules, prefix='config.')
  if config.get('num_devices', 0) > jax.device_count():
    raise UserInputError(f'config.num_devices={config.num_devices}: expected at most the '
                         f'{jax.device_count()} devices there are (0: every device).')
  if jax.process_count() > 1 and config.get('num_devices', 0) not in (0, jax.device_count()):
    # The first devices are the first processes': the others would have none to feed.
    raise UserInputError(f'config.num_devices={config.num_devices}: a run of '
                         f'{jax.process_count()} processes uses every device (0).')
  if not 0 <= config.ema_decay < 1:
    raise UserInputError(f'config.ema_decay={config.ema_decay}: expected 0 <= ema_decay < 1 '
                         '(e.g. 0.995; 0 keeps no average).')


def _make_fid_vit(config, mesh) -> fid_vit_lib.VitFid | None:
  """The ViT feature extractor, or None when `config.fid_vit_checkpoint` is '' or
  `config.fid_every` <= 0 (FID off)."""
  if config.fid_every <= 0 or not config.get('fid_vit_checkpoint'):
    return None
  return fid_vit_lib.VitFid(config.fid_vit_checkpoint, model_name=config.get('fid_vit_model', ''),
                            mesh=mesh, batch_size=config.get('fid_batch_size', 500))


def run(config, workdir: str) -> dict:
  """The training loop; returns the final metrics."""
  mesh_lib.initialize_distributed()  # before jax.device_count() in the checks
  _check_settings(config)
  devices = jax.devices()[:config.get('num_devices', 0) or None]
  mesh = mesh_lib.make_mesh(devices=devices)
  mesh_lib.check_batch_size(config.batch_size, mesh, field='config.batch_size')
  step_fn = train.make_train_step(config=config, mesh=mesh)  # checks config.loss
  # Nothing is written to the workdir until every check has passed and the data the run
  # needs (the FID's real images, a fresh run's first batch) is read: a refused run leaves a
  # fresh workdir as it was (opening the Checkpointer creates nothing; its folder is made at
  # the first save).
  ckpt, latest, done = run_config.open_checkpoints(config, workdir)
  if done is not None:  # The same command again: its result, not a second export.
    return done
  try:
    restored = latest is not None
    fid_vit = _make_fid_vit(config, mesh)  # Before the data: a bad checkpoint fails fast.
    source = data.get_source(config.dataset, config.split, data_dir=config.tfds_data_dir,
                             skip_bad_images=config.skip_bad_images)
    _check_image_shape(source, config)
    loader = data.train_loader(source, global_batch_size=config.batch_size,
                               preprocess=config.preprocess, seed=config.seed,
                               batch_field='batch_size')
    iterator = iter(loader)
    key = jax.random.PRNGKey(config.seed)
    state = jax.device_put(train.init_state(config, key), mesh_lib.replicated(mesh))
    if restored:
      state = run_config.resume(ckpt, state, config, workdir, data_iterator=iterator,
                                global_batch_size=config.batch_size)
    real = _real_images(source, config) if config.fid_every > 0 else None
    # A fresh run's first batch, read now: an image that fails only when decoded refuses
    # the run before anything is written. Step 1 trains on it.
    pending = [] if restored else [next(iterator)]
  except BaseException:
    ckpt.close()
    raise
  start = int(state['step'])
  io.makedirs(workdir)
  run_config.write(config, workdir)
  g_module = generators.build(config.generator.to_dict())
  sample_fn = jax.jit(lambda p, z: g_module.apply({'params': p}, z))
  latent = generators.latent_dim(config.generator.to_dict())
  fixed_z = np.asarray(jax.random.normal(jax.random.PRNGKey(1234), (64, latent)))
  fid_z = np.asarray(jax.random.normal(jax.random.PRNGKey(4321), (config.fid_samples, latent)))
  log = metrics_log.MetricsLog(workdir, resume_step=start if restored else -1)
  bar = metrics_log.Progress(total_steps=config.total_steps, initial_step=start,
                             images_per_step=config.batch_size)
  if fid_vit is not None:
    dataset = {'path': (os.path.abspath(config.dataset) if os.path.isdir(config.dataset)
                        else config.dataset), 'split': config.split,
               'preprocess': config.preprocess, 'samples': len(real), 'selection': 'seed 0'}
    real_stats, cache, cached = fid_vit.real_stats(
        lambda: real, cache_dir=io.join(workdir, 'fid_stats'), dataset=dataset)
    bar.write(f'fid_vit: real statistics of {real_stats.count} images '
              f'{"read from" if cached else "written to"} {cache}')
  logged = {}  # the last metrics written; they go into final.json
  evaluated = {}  # the last FIDs: final.json holds them too, the numbers a run is judged by

  def write_metrics(step, state, metrics):
    del state
    logged.clear()
    logged.update({k: float(v) for k, v in jax.device_get(metrics).items()})
    if not all(map(math.isfinite, logged.values())):  # Before the log and the checkpoint.
      raise FloatingPointError(f'step {step}: non-finite training metrics {logged}; lower '
                               'lr_g / lr_d (or raise r1_gamma / gp_lambda).')
    log.write(step, logged)
    bar.update(step, d_loss=logged['d_loss'], g_loss=logged['g_loss'])

  def write_samples(step, state, metrics):
    del metrics
    grid = train.image_grid(_generate(sample_fn, state['ema'], fixed_z))
    if jax.process_index() == 0:  # one writer for what every host computed
      _save_png(io.join(workdir, 'samples', f'step_{step:06d}.png'), grid)

  def write_fid(step, state, metrics):
    del metrics
    fake = _generate(sample_fn, state['ema'], fid_z)
    evals = {'pixel_fd': train.pixel_frechet_distance(real, fake)}
    if fid_vit is not None:
      evals['fid_vit'] = fid_vit.fid(real_stats, fid_vit.stats(fake))
    evaluated.clear()
    evaluated.update({k: float(v) for k, v in evals.items()})
    log.write(step, evals, split='eval', once=True)  # once: see the run that trains no step
    bar.write(f'step {step}: ' + ', '.join(f'{k} {v:.3f}' for k, v in evals.items()))

  state = loop.run(
      state, step_fn=lambda state, step: step_fn(
          state, mesh_lib.shard_batch((pending.pop() if pending else next(iterator))['image'],
                                      mesh), key),
      first_step=start, total_steps=config.total_steps, log=log, close=(bar, ckpt),
      hooks=[loop.Every(config.log_every, write_metrics),
             loop.Every(config.sample_every, write_samples),
             loop.Every(config.fid_every, write_fid, at_last=config.fid_every > 0),
             loop.Every(config.checkpoint_every, lambda step, state, metrics: ckpt.save(
                 step, state, data_iterator=iterator), at_stop=True)])
  if int(state['step']) == start and start:
    # No step ran: the run before this one stopped after its last checkpoint, before its
    # final.json. As vit evaluates, its last step's FID is computed for final.json (logged
    # once: that row may be there); its training metrics are that step's row in the log.
    logged.update(log.logged(start) or {})
    if config.fid_every > 0:
      write_fid(start, state, None)
  log.close()
  if jax.process_index() == 0:
    generators.save(io.join(workdir, 'generator.npz'), config.generator.to_dict(),
                    jax.device_get(state['ema']), overwrite=True)
  final = {'step': int(state['step']), **logged, **evaluated}
  metrics_log.write_json(io.join(workdir, 'final.json'), final)
  return final


def main(argv) -> None:
  del argv
  run(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  config_cli.run(main, prog='gan_jax.main', example='configs/gan.py:dcgan,mnist')
