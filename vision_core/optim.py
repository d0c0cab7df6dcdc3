"""Optimizers, learning-rate schedules and classification losses shared by the trainers.

`make_schedule` gives linear warmup then cosine or linear decay (the official ViT recipe);
`make_optimizer` wraps SGD-with-momentum (fine-tuning) or AdamW (from scratch) with global
gradient-norm clipping, all in optax.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from vision_core.errors import UserInputError

DECAY_TYPES = ('cosine', 'linear', 'constant')
OPTIMIZERS = ('sgd', 'adamw', 'adam')


def make_schedule(*, base_lr: float, total_steps: int, warmup_steps: int = 0,
                  decay_type: str = 'cosine', end_lr: float = 0.0) -> optax.Schedule:
  """Linear warmup from 0 to `base_lr` over `warmup_steps`, then `decay_type` to `end_lr`."""
  if decay_type not in DECAY_TYPES:
    raise UserInputError(f'decay_type={decay_type!r}: expected one of {", ".join(DECAY_TYPES)}.')
  if not 0 <= warmup_steps < total_steps:
    raise UserInputError(f'warmup_steps={warmup_steps} must be >= 0 and below total_steps='
                         f'{total_steps}.')
  decay_steps = total_steps - warmup_steps
  if decay_type == 'cosine':
    decay = optax.cosine_decay_schedule(base_lr, decay_steps, alpha=end_lr / base_lr
                                        if base_lr else 0.0)
  elif decay_type == 'linear':
    decay = optax.linear_schedule(base_lr, end_lr, decay_steps)
  else:
    decay = optax.constant_schedule(base_lr)
  if not warmup_steps:
    return decay
  return optax.join_schedules(
      [optax.linear_schedule(0.0, base_lr, warmup_steps), decay], [warmup_steps])


def make_optimizer(*, name: str, schedule: optax.Schedule, grad_norm_clip: float | None = None,
                   momentum: float = 0.9, weight_decay: float = 0.0, b1: float = 0.9,
                   b2: float = 0.999, mu_dtype=None) -> optax.GradientTransformation:
  """'sgd' (momentum, optional coupled L2 weight decay), 'adamw' (decoupled decay) or 'adam'."""
  if name not in OPTIMIZERS:
    raise UserInputError(f'optimizer={name!r}: expected one of {", ".join(OPTIMIZERS)}.')
  parts = []
  if grad_norm_clip:
    parts.append(optax.clip_by_global_norm(grad_norm_clip))
  if name == 'sgd':
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay))
    parts.append(optax.sgd(schedule, momentum=momentum or None,
                           accumulator_dtype=mu_dtype))
  elif name == 'adamw':
    parts.append(optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay,
                             mu_dtype=mu_dtype, mask=decay_mask))
  else:
    parts.append(optax.adam(schedule, b1=b1, b2=b2, mu_dtype=mu_dtype))
  return optax.chain(*parts)


def decay_mask(params):
  """Weight decay on matrices and conv kernels only (not biases, norms, embeddings' 1-D)."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def softmax_cross_entropy(logits: jax.Array, labels: jax.Array, *, num_classes: int,
                          label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross entropy `[B]` of float32 logits `[B, K]` against int labels `[B]`,
  with targets `(1 - s) * onehot + s / K`."""
  logits = logits.astype(jnp.float32)
  targets = jax.nn.one_hot(labels, num_classes)
  if label_smoothing:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
  return -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1)
