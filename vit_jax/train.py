"""Jit-compiled ViT train and eval steps on the `('data', 'model')` mesh.

Keyword-only factories return compiled functions; the loop around them is in
`vit_jax.train_loop`. Parameters and optimizer state are placed by the sharding strategy of
`vision_core.sharding` (replicated, fsdp, tp, fsdp_tp); batches are split over 'data'.

  state, shardings = create_train_state(model=m, tx=tx, image_shape=(224, 224, 3), mesh=mesh)
  train_step = make_train_step(model=m, tx=tx, schedule=lr, mesh=mesh, state_shardings=shardings,
                               num_classes=10, accum_steps=2, label_smoothing=0.1)
  state, metrics = train_step(state, {'image': [B, H, W, 3], 'label': [B]})
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vision_core import mesh as mesh_lib
from vision_core import optim
from vision_core import sharding as sharding_lib
from vision_core.errors import UserInputError


@flax.struct.dataclass
class TrainState:
  """Everything a checkpoint holds besides the data position: step, params, optimizer state."""
  step: jax.Array
  params: Any
  opt_state: Any


def _state_init(model, tx, image_shape, seed):
  """`init(params)`: the train state of `params`, or of `model`'s initial ones for None."""
  def init(params):
    if params is None:
      params = model.init(jax.random.key(seed), jnp.zeros((1, *image_shape), jnp.float32),
                          train=False)['params']
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
  return init


def abstract_train_state(*, model: nn.Module, tx: optax.GradientTransformation,
                         image_shape: tuple[int, int, int], mesh: Mesh,
                         strategy: str = 'replicated') -> tuple[TrainState, TrainState]:
  """`create_train_state`'s `(state, state_shardings)` with the state as
  `jax.ShapeDtypeStruct`s in those shardings, nothing computed: to compile a step ahead of
  time (bench/gpu_aot_check.py, on compile-only devices)."""
  abstract = jax.eval_shape(_state_init(model, tx, image_shape, 0), None)
  shardings = sharding_lib.named_shardings(abstract, mesh, strategy=strategy)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract, shardings)
  return state, shardings


def create_train_state(*, model: nn.Module, tx: optax.GradientTransformation,
                       image_shape: tuple[int, int, int], mesh: Mesh, seed: int = 0,
                       strategy: str = 'replicated',
                       init_params: Mapping[str, Any] | None = None
                       ) -> tuple[TrainState, TrainState]:
  """Initialises (or takes `init_params`, e.g. pretrained) params and optimizer state directly
  in their shardings; returns `(state, state_shardings)`."""
  init = _state_init(model, tx, image_shape, seed)
  abstract = jax.eval_shape(init, init_params)
  shardings = sharding_lib.named_shardings(abstract, mesh, strategy=strategy)
  if init_params is None:
    state = jax.jit(lambda: init(None), out_shardings=shardings)()
  else:
    params = jax.device_put(init_params, shardings.params)
    state = jax.jit(init, in_shardings=(shardings.params,), out_shardings=shardings)(params)
  return state, shardings


def _split_microbatches(batch, accum_steps: int, mesh: Mesh):
  """`[B, ...]` -> `[accum, B / accum, ...]`, keeping each device's rows on that device."""
  def split(x):
    x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:])
    x = jnp.swapaxes(x, 0, 1)
    return jax.lax.with_sharding_constraint(
        x, NamedSharding(mesh_lib.auto_axes(mesh), P(None, 'data')))
  return jax.tree.map(split, batch)


# Salt for the mixup key, so that dropout keeps the key (and masks) it has without mixup.
_MIXUP_SALT = 0x6D6978


def mixup(images, labels, key, alpha: float):
  """Mixup (Zhang et al., 2018) of a batch with itself reversed, one ratio per batch as in
  timm: `lam ~ Beta(alpha, alpha)`, `images [B, ...]` -> `lam * images + (1 - lam) *
  images[::-1]`. Returns `(mixed, labels[::-1], lam)`; the loss is `lam * CE(labels) +
  (1 - lam) * CE(partner labels)`. The partner is the same whatever the mesh (XLA moves
  the rows between devices), so sharded runs match single-device ones."""
  lam = jax.random.beta(key, alpha, alpha).astype(images.dtype)
  return lam * images + (1 - lam) * images[::-1], labels[::-1], lam


def make_train_step(*, model: nn.Module, tx: optax.GradientTransformation,
                    schedule: optax.Schedule, mesh: Mesh, state_shardings: TrainState,
                    num_classes: int, accum_steps: int = 1, label_smoothing: float = 0.0,
                    mixup_alpha: float = 0.0, seed: int = 0, donate: bool = True) -> Callable:
  """`(state, batch) -> (state, metrics)`; the input state's buffers are donated.

  `batch = {'image': [B, H, W, C] float, 'label': [B] int}`, B a multiple of the data axis
  times `accum_steps`. Gradients of `accum_steps` micro-batches are averaged (a scan, so
  memory is that of one micro-batch). `mixup_alpha > 0` mixes each micro-batch (`mixup`).
  `metrics`: loss, accuracy (against the unmixed labels), grad_norm, lr (scalars).
  Dropout and mixup keys derive from `fold_in(key(seed), step)`, so a resumed run draws the
  same masks and ratios.
  """
  if accum_steps < 1:
    raise UserInputError(f'accum_steps={accum_steps}: expected >= 1.')
  if mixup_alpha < 0:
    raise UserInputError(f'mixup_alpha={mixup_alpha}: expected >= 0 (0 turns mixup off).')
  base_key = jax.random.key(seed)

  def loss_fn(params, images, labels, key):
    targets = [(labels, 1.0)]
    if mixup_alpha > 0:
      images, partners, lam = mixup(images, labels, jax.random.fold_in(key, _MIXUP_SALT),
                                    mixup_alpha)
      targets = [(labels, lam), (partners, 1 - lam)]
    logits = model.apply({'params': params}, images, train=True, rngs={'dropout': key})
    losses = sum(weight * optim.softmax_cross_entropy(logits, target, num_classes=num_classes,
                                                      label_smoothing=label_smoothing)
                 for target, weight in targets)
    correct = jnp.argmax(logits, -1) == labels
    return jnp.mean(losses), jnp.mean(correct.astype(jnp.float32))

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, batch):
    key = jax.random.fold_in(base_key, state.step)
    if accum_steps == 1:
      (loss, accuracy), grads = grad_fn(state.params, batch['image'], batch['label'], key)
    else:
      micro = _split_microbatches(batch, accum_steps, mesh)
      def body(carry, inputs):
        i, (images, labels) = inputs
        (l, a), g = grad_fn(state.params, images, labels, jax.random.fold_in(key, i))
        return jax.tree.map(jnp.add, carry, (l, a, g)), None
      zeros = (jnp.zeros(()), jnp.zeros(()), jax.tree.map(jnp.zeros_like, state.params))
      (loss, accuracy, grads), _ = jax.lax.scan(
          body, zeros, (jnp.arange(accum_steps), (micro['image'], micro['label'])))
      loss, accuracy, grads = jax.tree.map(lambda x: x / accum_steps, (loss, accuracy, grads))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {'loss': loss, 'accuracy': accuracy, 'grad_norm': optax.global_norm(grads),
               'lr': schedule(state.step)}
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  batch_shardings = {'image': mesh_lib.batch_sharding(mesh, 4),
                     'label': mesh_lib.batch_sharding(mesh, 1)}
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, mesh_lib.replicated(mesh)),
                 donate_argnums=(0,) if donate else ())


def make_eval_step(*, model: nn.Module, mesh: Mesh, params_shardings: Any,
                   num_classes: int) -> Callable:
  """`(params, batch) -> {'correct', 'loss', 'count'}` sums over the rows where `batch['mask']`.

  `batch = {'image': [B, H, W, C], 'label': [B], 'mask': [B] bool}` (padding rows masked).
  """
  def step(params, batch):
    logits = model.apply({'params': params}, batch['image'], train=False)
    mask = batch['mask'].astype(jnp.float32)
    losses = optim.softmax_cross_entropy(logits, batch['label'], num_classes=num_classes)
    correct = (jnp.argmax(logits, -1) == batch['label']).astype(jnp.float32)
    return {'correct': jnp.sum(correct * mask), 'loss': jnp.sum(losses * mask),
            'count': jnp.sum(mask)}
  batch_shardings = {'image': mesh_lib.batch_sharding(mesh, 4),
                     'label': mesh_lib.batch_sharding(mesh, 1),
                     'mask': mesh_lib.batch_sharding(mesh, 1)}
  return jax.jit(step, in_shardings=(params_shardings, batch_shardings),
                 out_shardings=mesh_lib.replicated(mesh))


def make_predict_fn(*, model: nn.Module) -> Callable:
  """`(params, images [B, H, W, C]) -> probabilities [B, K]` (float32), jit-compiled."""
  return jax.jit(lambda params, images: jax.nn.softmax(
      model.apply({'params': params}, images, train=False).astype(jnp.float32), -1))


def evaluate(eval_step: Callable, params: Any, batches, mesh: Mesh) -> dict[str, float]:
  """Runs `eval_step` over masked batches; accuracy and mean loss over the real examples."""
  totals = None
  for batch in batches:
    out = eval_step(params, mesh_lib.shard_batch(batch, mesh))
    totals = out if totals is None else jax.tree.map(jnp.add, totals, out)
  totals = {k: float(v) for k, v in jax.device_get(totals).items()}
  count = totals['count']
  return {'accuracy': totals['correct'] / count, 'loss': totals['loss'] / count,
          'num_examples': int(round(count))}


def params_to_host(params: Any) -> Any:
  """Parameters as numpy on the host (gathered across processes)."""
  return mesh_lib.to_host(params) if jax.process_count() > 1 else jax.tree.map(np.asarray,
                                                                                params)
