"""The ViT training and evaluation runs behind `python -m vit_jax.main`.

`train_and_evaluate(config, workdir)`: resumes from the latest checkpoint in
`{workdir}/checkpoints` if there is one (state and data position), else starts from
`config.pretrained` or random weights; trains to `config.total_steps` with a progress bar,
periodic eval on the whole test split, metrics in `{workdir}/metrics.jsonl` and
`{workdir}/tensorboard`, checkpoints every `checkpoint_every` steps and at the end; writes
`{workdir}/model.npz` (official layout), `{workdir}/model.json` and `{workdir}/final.json`.
`workdir` is a local folder or a bucket URI (`gs://bucket/run`, via `vision_core.io`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vision_core import checkpointing, data, fused_norm, gpu_target, io, loop, metrics_log
from vision_core import run_config
from vision_core import mesh as mesh_lib
from vision_core import optim
from vision_core import sharding as sharding_lib
from vision_core.data import randaugment
from vision_core.errors import UserInputError
from vit_jax import checkpoint as vit_checkpoint
from vit_jax import layers, models_vit
from vit_jax import train as train_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


def preprocess_specs(config: ml_collections.ConfigDict, channels: int) -> tuple[str, str]:
  """Train and test op specs from `config.pp` (explicit `train_ops`/`test_ops` win)."""
  pp = config.pp
  rgb = 'to_rgb|' if channels == 1 and config.model.get('channels', 3) == 3 else ''
  crop, resize = pp.crop, pp.resize
  augment = {
      'resize_crop': f'resize({resize})|random_crop({crop})|flip_lr',
      'inception': f'inception_crop({crop})|flip_lr',
      'pad_crop': f'resize({crop})|random_crop({crop}, pad=4, mode="reflect")|flip_lr',
      'none': f'resize({crop})',
  }
  if pp.augment not in augment:
    raise UserInputError(f'pp.augment={pp.augment!r}: expected one of {", ".join(augment)}.')
  randaug = pp.get('randaugment', (0, 0))
  if (len(randaug) != 2 or randaug[0] < 0
      or not 0 <= randaug[1] <= randaugment.MAX_MAGNITUDE):
    raise UserInputError(f'pp.randaugment={tuple(randaug)}: expected (num_ops >= 0, '
                         f'magnitude in [0, {randaugment.MAX_MAGNITUDE}]); (0, ...) is off.')
  randaug = f'|randaugment({int(randaug[0])}, {randaug[1]})' if randaug[0] else ''
  train = pp.train_ops or f'{rgb}{augment[pp.augment]}{randaug}|value_range(-1, 1)'
  test = pp.test_ops or f'{rgb}resize({crop})|value_range(-1, 1)'
  return train, test


def _source(config, split: str, *, class_names: tuple[str, ...] | None = None):
  """The source of `split`; with `class_names` (the model's classes, i.e. the train split's),
  its labels are renumbered to that order, so a test folder lacking a class still scores."""
  source = data.get_source(config.dataset, split, data_dir=config.tfds_data_dir,
                           skip_bad_images=config.skip_bad_images)
  if class_names is not None:
    data.align_classes(source, class_names, what=f'{config.dataset} split {split!r}')
  if config.cache_in_memory and not isinstance(source, data.ArraySource):
    source = data.cache_in_memory(source)
  return source


def _train_class_names(config) -> tuple[str, ...] | None:
  """The train split's class names for an image folder (its sorted class folders), without
  listing the images; None when that split folder is absent or the dataset is no folder."""
  split_dir = os.path.join(config.dataset, config.pp.train)
  if isinstance(config.dataset, str) and os.path.isdir(split_dir):
    return tuple(data.sources.subfolders(split_dir))  # as ImageFolderSource numbers them
  return None


def _evaluated_class_names(config, workdir: str, *, from_checkpoint: bool
                           ) -> tuple[str, ...] | None:
  """The classes of the model `evaluate_only` scores: from the model.json written beside its
  weights (the workdir's for its checkpoints, else `pretrained`'s), which holds them even
  where the train split folder is gone or differs; else the train split folder's."""
  weights = io.join(workdir, 'model.npz') if from_checkpoint else config.pretrained
  try:
    meta = vit_checkpoint.model_json(weights) if weights else None
  except UserInputError:
    meta = None  # unreadable: the train split folder decides, as without one
  names = (meta or {}).get('class_names')
  return tuple(str(n) for n in names) if names else _train_class_names(config)


def build_model(config, num_classes: int) -> models_vit.VisionTransformer:
  if config.dtype not in DTYPES:
    raise UserInputError(f'dtype={config.dtype!r}: expected one of {", ".join(DTYPES)}.')
  # Each kernel choice: its values (the first is the default, which runs anywhere) and
  # those that compile only for a GPU.
  impls = {}
  for field, choices, gpu_only in (('attention', layers.ATTENTIONS, ('cudnn', 'pallas')),
                                   ('mlp_impl', layers.MLP_IMPLS, ('pallas',)),
                                   ('norm_impl', fused_norm.IMPLS, ('pallas',)),
                                   ('patch_embedding', models_vit.PATCH_EMBEDDINGS, ())):
    value = impls[field] = config.get(field, choices[0])
    if value not in choices:
      raise UserInputError(f'{field}={value!r}: expected one of {", ".join(choices)}.')
    if value in gpu_only:
      elsewhere = ' or '.join(c for c in choices if c not in gpu_only and 'interpret' not in c)
      gpu_target.require_gpu(f'{field}={value!r}', f'{elsewhere} (any backend)')
  attention_dropout = (config.model.transformer or {}).get('attention_dropout_rate', 0.0)
  if impls['attention'] != 'einsum' and attention_dropout:
    raise UserInputError(f"attention={impls['attention']!r} has no attention dropout but "
                         f'model.transformer.attention_dropout_rate={attention_dropout}; set it '
                         "to 0 or use attention='einsum'.")
  return models_vit.VisionTransformer(num_classes=num_classes, dtype=DTYPES[config.dtype],
                                      **impls, **config.model)


def _setup(config, num_classes: int, image_shape, mesh, *, pretrained: bool = True):
  """Model, optimizer, schedule, initial state and its shardings: `config.pretrained`'s
  weights, or random ones (also when `pretrained` is False: a checkpoint replaces them)."""
  model = build_model(config, num_classes)
  schedule = optim.make_schedule(base_lr=config.base_lr, total_steps=config.total_steps,
                                 warmup_steps=config.warmup_steps,
                                 decay_type=config.decay_type, end_lr=config.end_lr)
  tx = optim.make_optimizer(name=config.optimizer, schedule=schedule,
                            grad_norm_clip=config.grad_norm_clip, momentum=config.momentum,
                            weight_decay=config.weight_decay, b2=config.b2)
  init_params = None
  if pretrained and config.pretrained:
    fresh = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)['params'])
    fresh_np = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), fresh)
    init_params = vit_checkpoint.load_pretrained(
        pretrained_path=config.pretrained, init_params=fresh_np, model_config=config.model)
  state, shardings = train_lib.create_train_state(
      model=model, tx=tx, image_shape=image_shape, mesh=mesh, seed=config.seed,
      strategy=config.sharding, init_params=init_params)
  _warn_if_replicated(state.params, mesh, config)
  return model, tx, schedule, state, shardings


def _warn_if_replicated(params, mesh, config) -> None:
  note = sharding_lib.replication_note(params, mesh, strategy=config.sharding)
  if note:
    logging.warning('%s (config.mesh %s)', note, tuple(mesh.devices.shape))


def _check_config(config, mesh) -> None:
  mesh_lib.check_batch_size(config.batch, mesh, field='batch')
  mesh_lib.check_batch_size(config.batch_eval, mesh, field='batch_eval')
  # Before the split below (accum_steps=0 divided by zero); keep_checkpoints=0 would delete
  # every checkpoint; negative periods were taken for 0 and negative rates trained nonsense.
  run_config.check_fields(config, [
      ('total_steps', '> 0'), ('accum_steps', '> 0'), ('base_lr', '>= 0'), ('end_lr', '>= 0'),
      ('weight_decay', '>= 0'), ('grad_norm_clip', '>= 0', '0: no clipping'),
      ('momentum', 'in [0, 1)'), ('b2', 'in [0, 1)'), ('label_smoothing', 'in [0, 1)'),
      ('mixup_alpha', '>= 0', '0: off'), ('eval_every', '>= 0', run_config.ZERO_LAST),
      ('checkpoint_every', '>= 0', run_config.ZERO_LAST),
      ('progress_every', '>= 0', run_config.ZERO_LAST),
      ('keep_checkpoints', '> 0', 'a resumed run needs one')])
  if config.batch % (config.accum_steps * mesh.shape['data']):
    raise UserInputError(
        f'batch={config.batch} must split into accum_steps={config.accum_steps} micro-batches '
        f'each divisible by the {mesh.shape["data"]} devices of the data axis.')
  pp = config.pp
  if pp.augment == 'resize_crop' and not pp.train_ops and pp.resize < pp.crop:
    # Else the first train batch fails in random_crop, whose message names neither field.
    raise UserInputError(
        f'pp.resize={pp.resize} is below pp.crop={pp.crop}: resize_crop resizes the training '
        f'images to pp.resize and crops pp.crop at random; set --config.pp.resize={pp.crop} or '
        'more (the official recipe: 384/384 for CIFAR, 448/384 for ImageNet).')


def _check_pretrained_kept(config, workdir: str) -> None:
  """Refuses a fresh run whose `pretrained` file is the `model.npz` that it would export."""
  if (config.pretrained and config.export_npz and io.abspath(config.pretrained)
      == io.abspath(io.join(workdir, 'model.npz'))):
    raise UserInputError(
        f'pretrained={config.pretrained} is the model.npz that this run writes at its end in '
        f'workdir {workdir}, which would replace it; fine-tune into another workdir (or copy '
        'the file elsewhere first).')


def save_model_files(workdir: str, params, config, class_names, *,
                     test_preprocess: str | None = None) -> str:
  """`model.npz` (official layout) and `model.json` (what predict needs to rebuild it and to
  prepare images as the test split was: `test_preprocess`, the op spec of the evaluation).
  """
  path = io.join(workdir, 'model.npz')
  vit_checkpoint.save(path, params, overwrite=True)
  meta = {'model_name': config.model_name, 'model': config.model.to_dict(),
          'num_classes': len(class_names), 'class_names': list(class_names),
          'resolution': config.pp.crop, 'dataset': config.dataset}
  if test_preprocess:
    meta['test_preprocess'] = test_preprocess
  metrics_log.write_json(io.join(workdir, 'model.json'), meta)
  return path


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
  """Trains (resuming if `workdir` has checkpoints) and returns the final metrics dict.

  `on_step(step)` is called after every step (tests use it to simulate a crash).
  """
  mesh_lib.initialize_distributed()
  mesh = mesh_lib.make_config_mesh(config.mesh, field='mesh')
  _check_config(config, mesh)
  # Nothing is written to the workdir until every check has passed and the first batch is
  # read: a refused run leaves a fresh workdir as it was (opening the Checkpointer creates
  # nothing; its folder is made at the first save).
  ckpt, latest, done = run_config.open_checkpoints(config, workdir,
                                                   max_to_keep=config.keep_checkpoints)
  if done is not None:  # The same command again: its result, not a second evaluation.
    return done
  try:
    resuming = latest is not None
    # Before the datasets are read; a resumed run does not read `pretrained`.
    if not resuming and config.pretrained:
      vit_checkpoint.check_exists(config.pretrained, label=f'pretrained={config.pretrained}')
    train_source = _source(config, config.pp.train)
    test_source = _source(config, config.pp.test, class_names=train_source.class_names)
    channels = train_source[0]['image'].shape[-1]
    train_pp, test_pp = preprocess_specs(config, channels)
    crop = config.pp.crop
    image_shape = (crop, crop, 3 if channels == 1 and 'to_rgb' in train_pp else channels)
    num_classes = train_source.num_classes
    if not resuming:
      _check_pretrained_kept(config, workdir)
    # A resumed run takes its weights from the checkpoint: `pretrained` need not exist.
    model, tx, schedule, state, shardings = _setup(config, num_classes, image_shape, mesh,
                                                   pretrained=not resuming)
    loader = data.train_loader(train_source, global_batch_size=config.batch,
                               preprocess=train_pp, seed=config.seed,
                               worker_count=config.workers, batch_field='batch')
    batches = iter(loader)
    if resuming:
      state = run_config.resume(ckpt, state, config, workdir, data_iterator=batches,
                                global_batch_size=config.batch)
      logging.info('Resumed from %s at step %d', ckpt.directory, int(state.step))
    # A fresh run's first batch, read now: an op spec or an image that fails only when
    # decoded refuses the run before anything is written. Step 1 trains on it.
    pending = [] if resuming else [next(batches)]
  except BaseException:
    ckpt.close()
    raise
  start = int(state.step)
  io.makedirs(workdir)
  run_config.write(config, workdir)

  train_step = train_lib.make_train_step(
      model=model, tx=tx, schedule=schedule, mesh=mesh, state_shardings=shardings,
      num_classes=num_classes, accum_steps=config.accum_steps,
      label_smoothing=config.label_smoothing, mixup_alpha=config.get('mixup_alpha', 0.0),
      seed=config.seed)
  eval_step = train_lib.make_eval_step(model=model, mesh=mesh,
                                       params_shardings=shardings.params,
                                       num_classes=num_classes)

  def run_eval(params):
    return train_lib.evaluate(eval_step, params, data.eval_batches(
        test_source, global_batch_size=config.batch_eval, preprocess=test_pp,
        worker_count=config.workers), mesh)

  log = metrics_log.MetricsLog(workdir, resume_step=start if resuming else -1)
  bar = metrics_log.Progress(total_steps=config.total_steps, initial_step=start,
                             images_per_step=config.batch)
  history = []  # device metrics since the last progress line, averaged for it

  def write_progress(step, state, metrics):
    del state
    values = jax.device_get(history)
    history.clear()
    mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
    if not np.isfinite(mean['loss']):
      raise FloatingPointError(f'loss is {mean["loss"]} at step {step}; lower base_lr.')
    bar.update(step, loss=mean['loss'], lr=mean['lr'])
    log.write(step, {**mean, 'img_per_sec': bar.images_per_second})

  def write_eval(step, state, metrics):
    del metrics
    result = run_eval(state.params)
    log.write(step, result, split='eval')
    bar.write(f'step {step}: test accuracy {result["accuracy"]:.4f} '
              f'loss {result["loss"]:.4f} ({result["num_examples"]} images)')
    bar.restart_timer()

  hooks = [
      loop.Every(1, lambda step, state, metrics: history.append(metrics)),
      loop.Every(config.progress_every, write_progress),
      loop.Every(config.checkpoint_every,
                 lambda step, state, metrics: ckpt.save(step, state, data_iterator=batches),
                 at_stop=True),
      # Not at the last step: the final eval comes after the loop.
      loop.Every(config.eval_every, write_eval, at_last=False)]
  if on_step is not None:
    hooks.append(loop.Every(1, lambda step, state, metrics: on_step(step)))
  t0 = time.time()
  state = loop.run(
      state, step_fn=lambda state, step: train_step(state, mesh_lib.shard_batch(
          pending.pop() if pending else next(batches), mesh)),
      first_step=start, total_steps=config.total_steps, hooks=hooks, log=log,
      close=(bar, ckpt))
  result = run_eval(state.params)
  # once: a run that stopped after logging this evaluation, before final.json, is finished
  # by this one (no step left to train) without a second row of the same evaluation.
  log.write(config.total_steps, result, split='eval', once=True)
  log.close()
  final = {'step': int(state.step), 'test_accuracy': result['accuracy'],
           'test_loss': result['loss'], 'test_examples': result['num_examples'],
           'test_split': config.pp.test, 'dataset': config.dataset,
           'model': config.model_name, 'train_seconds_this_run': round(time.time() - t0, 1)}
  if config.export_npz:
    params = train_lib.params_to_host(state.params)  # a collective: every host takes part
    final['model_npz'] = io.join(workdir, 'model.npz')
    if jax.process_index() == 0:
      save_model_files(workdir, params, config, train_source.class_names,
                       test_preprocess=test_pp)
  metrics_log.write_json(io.join(workdir, 'final.json'), final)
  if jax.process_index() == 0:
    print(json.dumps(final, indent=2))
  return final


def evaluate_only(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Test accuracy of the latest checkpoint in `workdir`, else of `config.pretrained`."""
  mesh_lib.initialize_distributed()
  mesh = mesh_lib.make_config_mesh(config.mesh, field='mesh')
  mesh_lib.check_batch_size(config.batch_eval, mesh, field='batch_eval')
  run_config.check_same_program(config, workdir)
  ckpt_dir = io.join(workdir, 'checkpoints')
  # Closed on every path, the errors included. Opening it creates nothing, so a workdir
  # without checkpoints needs no check first.
  with checkpointing.Checkpointer(ckpt_dir) as ckpt:
    step = ckpt.latest_step()
    if step is None and config.pretrained:  # Else the checkpoint is scored, not pretrained.
      vit_checkpoint.check_exists(config.pretrained, label=f'pretrained={config.pretrained}')
    # The model's classes (the test folder may lack some).
    test_source = _source(config, config.pp.test, class_names=_evaluated_class_names(
        config, workdir, from_checkpoint=step is not None))
    channels = test_source[0]['image'].shape[-1]
    _, test_pp = preprocess_specs(config, channels)
    image_shape = (config.pp.crop, config.pp.crop, 3 if 'to_rgb' in test_pp else channels)
    num_classes = test_source.num_classes
    model = build_model(config, num_classes)
    fresh = jax.eval_shape(lambda: model.init(
        jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)['params'])
    # As training places them: a model that needs FSDP to fit is scored with FSDP.
    params_shardings = sharding_lib.named_shardings(fresh, mesh, strategy=config.sharding)
    _warn_if_replicated(fresh, mesh, config)
    if step is not None:
      # The checkpoint holds the weights; don't load pretrained too. Only they are read: the
      # optimizer state would take memory, and this config's optimizer (and schedule) need not
      # be the training run's.
      try:
        params = ckpt.restore_part('params', jax.tree.map(
            lambda s, sharding: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
            fresh, params_shardings), step=step)
      except UserInputError as e:
        raise UserInputError(f'{e}{run_config.describe_changes(config, workdir)}') from None
      source = f'{ckpt_dir} step {step}'
    elif config.pretrained:
      params = jax.device_put(vit_checkpoint.load_params(config.pretrained, fresh),
                              params_shardings)
      source = config.pretrained
    else:
      exported = io.join(workdir, 'model.npz')  # kept where the checkpoints were deleted
      hint = (f' Its exported model is {exported}: --config.pretrained={exported} scores it.'
              if io.exists(exported) else '')
      raise UserInputError(f'mode=evaluate: {workdir} has no checkpoints and config.pretrained '
                           f'is not set; nothing to evaluate.{hint}')
  eval_step = train_lib.make_eval_step(model=model, mesh=mesh, params_shardings=params_shardings,
                                       num_classes=num_classes)
  result = train_lib.evaluate(eval_step, params, data.eval_batches(
      test_source, global_batch_size=config.batch_eval, preprocess=test_pp,
      worker_count=config.workers), mesh)
  final = {'params': source, 'test_accuracy': result['accuracy'], 'test_loss': result['loss'],
           'test_examples': result['num_examples'], 'test_split': config.pp.test,
           'dataset': config.dataset, 'model': config.model_name}
  io.makedirs(workdir)
  metrics_log.write_json(io.join(workdir, 'eval.json'), final)
  if jax.process_index() == 0:
    print(json.dumps(final, indent=2))
  return final
