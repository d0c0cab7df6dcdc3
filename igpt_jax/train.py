"""Image GPT training: generative (next token or BERT) pretraining and `clf` fine-tuning.

`train_and_evaluate(config, workdir)` (see configs/igpt.py) reads images with the shared
pipeline (`vision_core.data`), turns them into palette tokens on the device, and trains with
one jit-compiled step over the `('data', 'model')` mesh of `config.mesh` (batch split over
'data'; parameters and optimizer state replicated, or split as `config.sharding` says: FSDP
over 'data', tensor parallelism over 'model' by `igpt_model.TP_RULES`). A workdir holding
checkpoints is resumed, data position included (the weights of `init_from` are then not
read: the checkpoint replaces them). Outputs:
`checkpoints/`, `config.json`, `metrics.jsonl`, TensorBoard scalars, `palette.npy`, `params.npz`,
`samples.png` (completions of test images) and `final.json`. `workdir` is a local folder or a
bucket URI (`gs://bucket/run`, via `vision_core.io`).
"""

from __future__ import annotations

import json
import math
import time
from typing import Any

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from igpt_jax import checkpoint as igpt_checkpoint
from igpt_jax import model as igpt_model
from igpt_jax import palette as palette_lib
from igpt_jax import run_palette
from igpt_jax import sample as igpt_sample
from vision_core import data, gpu_target, io, loop, mesh as mesh_lib, metrics_log, npz, optim
from vision_core import run_config
from vision_core import sharding as sharding_lib
from vision_core.errors import UserInputError

LN2 = math.log(2.0)
OBJECTIVES = ('generative', 'bert', 'finetune')


def bits_per_dim(nats_per_token):
  """Nats per palette token -> bits per RGB dimension (a token codes 3 sub-pixels)."""
  return nats_per_token / (3 * LN2)


def token_losses(model, params, tokens, *, objective: str, key=None, labels=None,
                 bert_mask_prob: float = 0.15):
  """Per-example losses (nats). Returns `(gen [B], clf [B] or None, clf_logits or None)`.

  generative: mean next-token cross-entropy; bert: mean over the masked positions (the
  release's objective); finetune: also the `clf` cross-entropy.
  """
  if objective == 'bert':
    keep = (jax.random.uniform(key, tokens.shape) > bert_mask_prob).astype(jnp.float32)
    out = model.apply({'params': params}, tokens, bert_keep=keep)
  else:
    out = model.apply({'params': params}, tokens)
  ce = optax.softmax_cross_entropy_with_integer_labels(out['logits'], tokens)
  if objective == 'bert':
    masked = 1.0 - keep
    gen = jnp.sum(ce * masked, axis=1) / jnp.maximum(jnp.sum(masked, axis=1), 1.0)
  else:
    gen = jnp.mean(ce, axis=1)
  if objective != 'finetune':
    return gen, None, None
  clf = optax.softmax_cross_entropy_with_integer_labels(out['clf_logits'], labels)
  return gen, clf, out['clf_logits']


def make_optimizer(config) -> optax.GradientTransformation:
  """AdamW (decay on matrices only), linear warmup then cosine decay, global-norm clipping."""
  schedule = optim.make_schedule(base_lr=config.lr, total_steps=config.total_steps,
                                 warmup_steps=config.warmup_steps)
  return optim.make_optimizer(name='adamw', schedule=schedule, grad_norm_clip=config.grad_clip,
                              b2=config.b2, weight_decay=config.weight_decay)


def make_train_step(*, model, optimizer, objective: str, gen_loss_weight: float = 1.0,
                    bert_mask_prob: float = 0.15, state_shardings: Any = None):
  """A jit-compiled `step(state, batch, centers, key) -> (state, metrics)`.

  `batch` = `{'image': uint8 [B, H, W, 3], 'label': [B]}` (sharded over 'data'); images
  become palette tokens on the device. `state_shardings` (a tree like `state`): the new
  state is placed so, as the old one was; None: where XLA puts it.
  """
  def loss_fn(params, tokens, labels, key):
    gen, clf, logits = token_losses(model, params, tokens, objective=objective, key=key,
                                    labels=labels, bert_mask_prob=bert_mask_prob)
    metrics = {'bits_per_dim': bits_per_dim(jnp.mean(gen))}
    loss = jnp.mean(gen)
    if clf is not None:
      loss = jnp.mean(clf) + gen_loss_weight * loss
      metrics['clf_loss'] = jnp.mean(clf)
      metrics['accuracy'] = jnp.mean(jnp.argmax(logits, -1) == labels)
    return loss, metrics

  def step(state, batch, centers, key):
    tokens = palette_lib.tokens_from_images(batch['image'], centers)
    key = jax.random.fold_in(key, state['step'])
    grads, metrics = jax.grad(loss_fn, has_aux=True)(state['params'], tokens, batch['label'],
                                                     key)
    updates, opt_state = optimizer.update(grads, state['opt_state'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    metrics['grad_norm'] = optax.global_norm(grads)
    return dict(params=params, opt_state=opt_state, step=state['step'] + 1), metrics

  if state_shardings is None:
    return jax.jit(step, donate_argnums=0)
  mesh = jax.tree.leaves(state_shardings)[0].mesh
  return jax.jit(step, donate_argnums=0,
                 out_shardings=(state_shardings, mesh_lib.replicated(mesh)))


def make_eval_step(*, model, objective: str):
  """A jit-compiled `eval(params, batch, centers) -> sums` of bits/dim and correct over the
  valid (`mask`) rows; BERT evaluates the masked positions with a fixed key."""
  def evaluate(params, batch, centers):
    tokens = palette_lib.tokens_from_images(batch['image'], centers)
    gen, _, logits = token_losses(model, params, tokens, objective=objective,
                                  key=jax.random.PRNGKey(0), labels=batch['label'])
    mask = batch['mask'].astype(jnp.float32)
    sums = {'bits_per_dim': jnp.sum(bits_per_dim(gen) * mask), 'count': jnp.sum(mask)}
    if logits is not None:
      sums['correct'] = jnp.sum((jnp.argmax(logits, -1) == batch['label']) * mask)
    return sums
  return jax.jit(evaluate)


class EvalSubset:
  """`n` examples of a source (all if `n` is 0 or larger), drawn once with a fixed seed: a
  fast evaluation subset, the same at every evaluation and in every run. Not the first `n`:
  image folders list their examples class by class, so those were CIFAR-10's airplanes."""

  def __init__(self, source, n: int):
    self.source = source
    self.indices = np.arange(len(source))
    if n and n < len(source):
      self.indices = np.sort(np.random.default_rng(0).permutation(len(source))[:n])

  def __len__(self):
    return len(self.indices)

  def __getitem__(self, i):
    return self.source[int(self.indices[i])]


def build_model(config, num_classes: int = 0) -> igpt_model.ImageGPT:
  if config.objective not in OBJECTIVES:
    raise UserInputError(f'objective={config.objective!r}: expected one of '
                         f'{", ".join(OBJECTIVES)}.')
  if config.dtype not in ('float32', 'bfloat16'):
    raise UserInputError(f'dtype={config.dtype!r}: expected float32 or bfloat16.')
  if config.attention not in igpt_model.ATTENTIONS:
    raise UserInputError(f'attention={config.attention!r}: expected one of '
                         f'{", ".join(igpt_model.ATTENTIONS)}.')
  if config.attention == 'pallas':
    gpu_target.require_gpu("attention='pallas'", 'einsum')
  return igpt_model.ImageGPT(
      **igpt_model.get_size(config.size), vocab_size=config.vocab_size,
      n_ctx=config.image_size ** 2, bert=config.objective == 'bert',
      num_classes=num_classes if config.objective == 'finetune' else 0,
      dtype=jnp.dtype(config.dtype), attention=config.attention)


def initial_params(config, model, key) -> Any:
  params = igpt_model.init_params(model, key)
  if not config.init_from:
    return params
  # Fine-tuning may start from weights without the LM head (HF ImageGPTModel or
  # ImageGPTForImageClassification): the head then starts from zero, as a fresh model's
  # does. Generative training continues the head's predictions, so it must have them.
  finetune = config.objective == 'finetune'
  loaded, _ = igpt_checkpoint.load(config.init_from, need_lm_head=not finetune)
  if finetune and not np.any(loaded['wtet']):  # A trained head is never all zero.
    print(f'init_from={config.init_from}: no language-model head; it starts from zero, so '
          'bits/dim and samples.png measure the head learned from gen_loss_weight '
          f'={config.gen_loss_weight}.')
  flat, new = npz.flatten(loaded), npz.flatten(params)
  head, fresh = flat.pop('clf/wclf', None), new.get('clf/wclf')
  # Fine-tuning keeps a head trained for the dataset's classes; one for another class count
  # (weights fine-tuned elsewhere, HF's score of another dataset) is replaced by the model's
  # own zero head, as vit does. A head of another width stays, to be listed with the other
  # mismatches of those weights.
  replaced = (head is not None and fresh is not None and np.ndim(head) == 2 and
              np.shape(head)[1:] == np.shape(fresh)[1:] and np.shape(head) != np.shape(fresh))
  if fresh is not None:
    flat['clf/wclf'] = np.asarray(fresh) if head is None or replaced else head
  params = igpt_checkpoint.check_params(flat, model, source=config.init_from)
  if replaced:
    print(f'init_from={config.init_from}: its head clf/wclf has {np.shape(head)[0]} classes, '
          f'the dataset has {np.shape(fresh)[0]}; a new clf/wclf head for them starts from '
          'zero.')
  return params


def place_state(config, params, optimizer, mesh) -> tuple[dict[str, Any], Any]:
  """The training state `{params, opt_state, step}` on `mesh`, split as `config.sharding`
  says, and its shardings (a tree like it). The optimizer state is made where it lives."""
  def make(p):
    return dict(params=p, opt_state=optimizer.init(p), step=jnp.int32(0))
  shardings = sharding_lib.named_shardings(jax.eval_shape(make, params), mesh,
                                           strategy=config.sharding,
                                           tp_rules=igpt_model.TP_RULES)
  note = sharding_lib.replication_note(params, mesh, strategy=config.sharding,
                                       tp_rules=igpt_model.TP_RULES)
  if note:
    print(f'{note} (mesh {tuple(mesh.devices.shape)})')
  params = jax.device_put(params, shardings['params'])
  return jax.jit(make, out_shardings=shardings)(params), shardings


def _source(config, split):
  source = data.get_source(config.dataset, split, data_dir=config.tfds_data_dir,
                           skip_bad_images=config.skip_bad_images)
  return data.cache_in_memory(source) if config.cache_in_memory else source


def evaluate(eval_step, params, centers, source, config, mesh) -> dict[str, float]:
  totals: dict[str, float] = {}
  for batch in data.eval_batches(EvalSubset(source, config.eval_examples),
                                 global_batch_size=config.batch_size,
                                 preprocess=palette_lib.preprocess_spec(config.image_size)):
    sums = eval_step(params, mesh_lib.shard_batch(batch, mesh), centers)
    for k, v in mesh_lib.to_host(sums).items():
      totals[k] = totals.get(k, 0.0) + float(v)
  out = {'bits_per_dim': totals['bits_per_dim'] / max(totals['count'], 1.0)}
  if 'correct' in totals:
    out['accuracy'] = totals['correct'] / max(totals['count'], 1.0)
  return out


def check_config(config, mesh) -> None:
  """Refuses numeric fields out of range (`UserInputError` naming the field), before any
  work: else they failed later with messages naming other things (n_ctx, the loader's
  `batch`, a division by zero) or ran nonsense (a negative lr ascends, a negative
  time_limit_minutes stops at the first logging step, bert_mask_prob=0 trains on no loss)."""
  mesh_lib.check_batch_size(config.batch_size, mesh, field='batch_size')
  fitting = 'used to fit a palette when neither palette nor init_from gives one'
  run_config.check_fields(config, [
      ('total_steps', '> 0'), ('image_size', '> 0'), ('vocab_size', '> 0'),
      ('lr', '>= 0'), ('weight_decay', '>= 0'), ('b2', 'in [0, 1)'),
      ('grad_clip', '>= 0', '0: no clipping'), ('gen_loss_weight', '>= 0'),
      ('time_limit_minutes', '>= 0', '0: no limit'),
      ('log_every', '> 0', 'the time limit is checked at logging steps'),
      ('eval_every', '>= 0', run_config.ZERO_LAST),
      ('checkpoint_every', '>= 0', run_config.ZERO_LAST),
      ('keep_checkpoints', '> 0', 'a resumed run needs one'),
      ('eval_examples', '>= 0', '0: the whole test split'),
      ('palette_fit_images', '> 0', fitting), ('palette_fit_steps', '> 0', fitting)])
  if config.objective == 'bert':
    run_config.check_fields(config, [('bert_mask_prob', 'in (0, 1]')])


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains per `config`, resuming from `workdir`'s checkpoints; returns the final metrics."""
  mesh_lib.initialize_distributed()
  workdir = io.abspath(workdir)
  mesh = mesh_lib.make_config_mesh(config.mesh, field='mesh')
  check_config(config, mesh)
  optimizer = make_optimizer(config)  # Checks warmup_steps against total_steps.
  # Nothing is written to the workdir until every check has passed and a fresh run's first
  # batch is read: a refused run leaves a fresh workdir as it was (opening the Checkpointer
  # creates nothing; its folder is made at the first save).
  ckpt, latest, done = run_config.open_checkpoints(config, workdir,
                                                   max_to_keep=config.keep_checkpoints)
  if done is not None:  # The same command again: its result, not a second evaluation.
    return done
  try:
    restored = latest is not None
    train_source, test_source = _source(config, config.train_split), _source(
        config, config.test_split)
    model = build_model(config, train_source.num_classes)
    key = jax.random.PRNGKey(config.seed)
    # A resumed run takes its weights from the checkpoint, as vit's does: the model's own
    # init gives their shapes, and init_from is not read (it may have been moved or deleted
    # since, and its notes were said by the run that started from it); nor is its palette:
    # the workdir's palette.npy is the one the checkpoints learned.
    params = (igpt_model.init_params(model, key) if restored
              else initial_params(config, model, key))
    # A new palette is saved with the outputs: a palette left by a refused run would be
    # taken over by the corrected one (another init_from, another palette).
    palette, new_palette = run_palette.choose_palette(config, train_source, workdir,
                                                      resuming=restored)
    centers = jax.device_put(jnp.asarray(palette), mesh_lib.replicated(mesh))
    state, state_shardings = place_state(config, params, optimizer, mesh)
    loader = data.train_loader(train_source, global_batch_size=config.batch_size,
                               preprocess=palette_lib.preprocess_spec(config.image_size),
                               seed=config.seed, batch_field='batch_size')
    it = iter(loader)
    if restored:
      state = run_config.resume(ckpt, state, config, workdir, data_iterator=it,
                                global_batch_size=config.batch_size)
    # A fresh run's first batch, read now: an image that fails only when decoded refuses
    # the run before anything is written. Step 1 trains on it (the stream is unchanged).
    pending = [] if restored else [next(it)]
  except BaseException:
    ckpt.close()
    raise
  first = int(state['step'])
  io.makedirs(workdir)
  if new_palette:
    run_palette.save_palette_once(io.join(workdir, 'palette.npy'), palette)
  run_config.write(config, workdir)
  train_step = make_train_step(model=model, optimizer=optimizer, objective=config.objective,
                               gen_loss_weight=config.gen_loss_weight,
                               bert_mask_prob=config.bert_mask_prob,
                               state_shardings=state_shardings)
  eval_step = make_eval_step(model=model, objective=config.objective)
  log = metrics_log.MetricsLog(workdir, resume_step=first if restored else -1)
  bar = metrics_log.Progress(total_steps=config.total_steps, initial_step=first,
                             images_per_step=config.batch_size)
  result: dict[str, Any] = {}
  if first == 0:
    result['initial_test'] = evaluate(eval_step, state['params'], centers, test_source,
                                      config, mesh)
    log.write(0, result['initial_test'], split='test')
  deadline = time.monotonic() + 60 * config.time_limit_minutes if config.time_limit_minutes \
      else math.inf

  def past_deadline(step: int) -> bool:
    if step % config.log_every or deadline == math.inf:
      return False
    late = time.monotonic() > deadline
    if jax.process_count() > 1:  # Process 0's clock decides, so that all hosts stop together.
      late = bool(multihost_utils.broadcast_one_to_all(np.bool_(late)))
    return late

  def write_metrics(step, state, metrics):
    del state
    host = {k: float(v) for k, v in mesh_lib.to_host(metrics).items()}
    if not all(map(math.isfinite, host.values())):
      raise FloatingPointError(f'step {step}: non-finite training metrics {host}; lower lr.')
    log.write(step, host)
    bar.update(step, loss=host['bits_per_dim'])

  def write_test(step, state, metrics):
    del metrics
    result['test'] = evaluate(eval_step, state['params'], centers, test_source, config, mesh)
    log.write(step, result['test'], split='test')
    bar.write(f'step {step}: test ' + ', '.join(f'{k} {v:.4f}'
                                                for k, v in result['test'].items()))

  state = loop.run(
      state, step_fn=lambda state, step: train_step(
          state, mesh_lib.shard_batch(pending.pop() if pending else next(it), mesh), centers,
          key),
      first_step=first, total_steps=config.total_steps, log=log, close=(bar, ckpt),
      hooks=[loop.Every(config.log_every, write_metrics),
             loop.Every(config.eval_every, write_test),
             loop.Every(config.checkpoint_every,
                        lambda step, state, metrics: ckpt.save(step, state, data_iterator=it),
                        at_stop=True)],
      # Out of time: checked at logging steps; that step becomes the last one (logged,
      # evaluated, checkpointed).
      stop_after=past_deadline)
  if 'test' not in result:
    # No step ran: the run before this one stopped after its last checkpoint, before its
    # final.json. Its last step is evaluated for final.json, as vit does; once in the log,
    # which may hold that step's row already.
    result['test'] = evaluate(eval_step, state['params'], centers, test_source, config, mesh)
    log.write(first, result['test'], split='test', once=True)
  params = mesh_lib.to_host(state['params'])
  if jax.process_index() == 0:
    igpt_checkpoint.save(io.join(workdir, 'params.npz'), params, overwrite=True)
    if config.sample_grid and not model.bert and not igpt_sample.has_lm_head(params):
      # A head never trained (fine-tuned from weights without one, gen_loss_weight=0): its
      # samples would be uniform noise (sampling warns for such params).
      print('samples.png not written: the language-model head wtet is still all zero.')
    elif config.sample_grid and not model.bert:
      write_samples(model, params, np.asarray(centers), test_source, config,
                    io.join(workdir, 'samples.png'))
  final_path = io.join(workdir, 'final.json')
  if first:
    # A resumed run keeps the initial evaluation that the first run measured (its test
    # metrics are this run's: an older final.json's are another step's).
    result = {**_earlier_initial_test(final_path, log), **result}
  result.update(step=int(state['step']), workdir=workdir)
  metrics_log.write_json(final_path, result)
  log.close()
  return result


def _earlier_initial_test(final_path: str, log: metrics_log.MetricsLog) -> dict[str, Any]:
  """{'initial_test': ...} from an earlier run's final.json, else from its step-0 test row
  in metrics.jsonl (final.json deleted, unreadable or without it: it is written again),
  else {}."""
  try:
    earlier = json.loads(io.read_bytes(final_path)) if io.exists(final_path) else {}
  except ValueError:
    earlier = {}
  if isinstance(earlier, dict) and 'initial_test' in earlier:
    return {'initial_test': earlier['initial_test']}
  logged = log.logged(0, split='test')  # the rows the resume kept
  return {'initial_test': logged} if logged is not None else {}


def write_samples(model, params, centers, source, config, path, *, n_images: int = 4,
                  n_completions: int = 4) -> None:
  """Completions of the first `n_images` test images (or all, if fewer; top half kept):
  original | kept | samples."""
  resize = data.parse_preprocess(palette_lib.preprocess_spec(config.image_size))
  images = np.stack([resize(source[i])['image'] for i in range(min(n_images, len(source)))])
  tokens = palette_lib.quantize(images, centers)
  size = config.image_size
  out = igpt_sample.complete(model, params, jax.random.PRNGKey(config.seed), tokens,
                             image_shape=(size, size), keep_rows=size // 2,
                             num_completions=n_completions)
  grid = igpt_sample.completion_grid(palette_lib.dequantize(tokens, centers),
                                     palette_lib.dequantize(np.asarray(out), centers),
                                     keep_rows=size // 2)
  igpt_sample.save_png(path, grid, overwrite=True)
