"""The latent search: find z minimising loss(G(z), x), as ONE jit-compiled program.

All images of a batch and R random restarts per image are optimised together: the
generator runs once per step on a `[B * R, latent]` batch, each (image, restart) has its
own optimiser state (the update is vmapped), the step loop is a `lax.while_loop` that
stops early when every trajectory has plateaued, and the batch is sharded over the mesh's
'data' axis. The best step of the best restart is kept per image.

Optimisers: the study's SGD (lr 1, momentum 0.9) or Adam, both optionally followed by
reduce-on-plateau (factor 0.1, patience 10; `optax.contrib.reduce_on_plateau`, driven by
each trajectory's own loss, like torch's `ReduceLROnPlateau` stepped every iteration).
Loss: MSE in the generator's own value range (targets must be given in that range,
[-1, 1] for our generators; the study compared [-1, 1] outputs with [0, 1] targets),
plus optionally `perceptual_weight` * MSE between feature vectors (e.g. our ViT's
pre-logits, see `gan_jax.perceptual`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from vision_core import mesh as mesh_lib
from vision_core.errors import UserInputError


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """Settings of the latent search.

  Attributes:
    steps: maximum optimisation steps (the loop may stop earlier, see stop_patience).
    restarts: random initial latents per image (R); the best is kept.
    optimizer: 'sgd' (the study's, with momentum) or 'adam'.
    learning_rate: None = 1.0 for sgd (the study's), 0.05 for adam.
    momentum: SGD momentum (0.9 in the study).
    plateau_factor / plateau_patience: reduce-on-plateau; factor None disables it.
    stop_patience: stop once no trajectory improved its best loss by more than
      stop_rtol (relative) for this many steps; 0 disables early stopping.
    perceptual_weight: weight of the feature term (needs a features function).
    seed: for the random initial latents (restart r of image b does not depend on R).
  """
  steps: int = 500
  restarts: int = 4
  optimizer: str = 'sgd'
  learning_rate: float | None = None
  momentum: float = 0.9
  plateau_factor: float | None = 0.1
  plateau_patience: int = 10
  stop_patience: int = 50
  stop_rtol: float = 1e-4
  perceptual_weight: float = 0.0
  seed: int = 0

  def validate(self) -> None:
    if self.optimizer not in ('sgd', 'adam'):
      raise UserInputError(f"optimizer={self.optimizer!r}: expected 'sgd' or 'adam'.")
    if self.steps < 1 or self.restarts < 1:
      raise UserInputError(f'steps={self.steps}, restarts={self.restarts}: both must be >= 1.')


class SearchResult(NamedTuple):
  """latents `[B, L]` (best per image), loss `[B]`, restart_losses `[B, R]` (best of each
  restart), curves `[steps, B, R]` (loss per step; NaN after an early stop),
  steps_run (scalar)."""
  latents: Any
  loss: Any
  restart_losses: Any
  curves: Any
  steps_run: Any


def make_optimizer(config: SearchConfig) -> optax.GradientTransformationExtraArgs:
  config.validate()
  if config.optimizer == 'sgd':
    lr = 1.0 if config.learning_rate is None else config.learning_rate
    base = optax.sgd(lr, momentum=config.momentum or None)
  else:
    base = optax.adam(0.05 if config.learning_rate is None else config.learning_rate)
  if config.plateau_factor is None:
    return optax.with_extra_args_support(base)
  return optax.chain(base, optax.contrib.reduce_on_plateau(
      factor=config.plateau_factor, patience=config.plateau_patience))


def initial_latents(key, batch: int, restarts: int, latent_dim: int):
  """`[B, R, L]` N(0, 1) latents; restart r uses `fold_in(key, r)`, whatever R is."""
  z = [jax.random.normal(jax.random.fold_in(key, r), (batch, latent_dim))
       for r in range(restarts)]
  return jnp.stack(z, axis=1)


def make_latent_search(apply_fn: Callable, *, latent_dim: int, config: SearchConfig,
                       mesh: Mesh | None = None,
                       features_fn: Callable | None = None) -> Callable:
  """Returns `search(params, targets [B, H, W, C]) -> SearchResult`, jit-compiled.

  Args:
    apply_fn: `(params, z [N, L]) -> images [N, H, W, C]`, per-sample (no batch coupling).
    latent_dim: L.
    config: see `SearchConfig`.
    mesh: if given, targets and latents are sharded over its 'data' axis (B must divide).
    features_fn: `images [N, H, W, C] -> [N, F]` for the perceptual term.
  """
  config.validate()
  if config.perceptual_weight and features_fn is None:
    raise UserInputError('perceptual_weight > 0 needs a features function (our ViT).')
  tx = make_optimizer(config)
  R, steps = config.restarts, config.steps

  def search(params, targets):
    targets = jnp.asarray(targets, jnp.float32)
    B = targets.shape[0]
    z0 = initial_latents(jax.random.PRNGKey(config.seed), B, R, latent_dim)
    z0 = z0.reshape(B * R, latent_dim)
    target_features = features_fn(targets) if config.perceptual_weight else None

    def per_sample_loss(z):
      images = apply_fn(params, z)
      images = images.reshape(B, R, *images.shape[1:])
      loss = jnp.mean(jnp.square(images - targets[:, None]), axis=(2, 3, 4))
      if config.perceptual_weight:
        feats = features_fn(images.reshape(B * R, *images.shape[2:]))
        feats = feats.reshape(B, R, -1)
        loss += config.perceptual_weight * jnp.mean(
            jnp.square(feats - target_features[:, None]), axis=-1)
      return loss.reshape(B * R)

    def total(z):
      loss = per_sample_loss(z)
      return jnp.sum(loss), loss  # Samples are independent: d(sum)/dz_i = dloss_i/dz_i.

    grad_fn = jax.value_and_grad(total, has_aux=True)
    update = jax.vmap(lambda g, s, z, v: tx.update(g, s, z, value=v))

    def body(carry):
      step, z, opt_state, best, best_z, ref, stale, curves = carry
      (_, loss), grads = grad_fn(z)
      better = loss < best
      best_z = jnp.where(better[:, None], z, best_z)
      best = jnp.minimum(loss, best)
      improved = loss < ref * (1.0 - config.stop_rtol)
      ref = jnp.where(improved, loss, ref)
      stale = jnp.where(improved, 0, stale + 1)
      updates, opt_state = update(grads, opt_state, z, loss)
      z = optax.apply_updates(z, updates)
      curves = curves.at[step].set(loss.reshape(B, R))
      return step + 1, z, opt_state, best, best_z, ref, stale, curves

    def cond(carry):
      step, stale = carry[0], carry[6]
      running = step < steps
      if config.stop_patience:
        running &= jnp.any(stale < config.stop_patience)
      return running

    inf = jnp.full((B * R,), jnp.inf, jnp.float32)
    carry = (jnp.asarray(0), z0, jax.vmap(tx.init)(z0), inf, z0, inf,
             jnp.zeros((B * R,), jnp.int32), jnp.full((steps, B, R), jnp.nan, jnp.float32))
    steps_run, z, _, best, best_z, _, _, curves = jax.lax.while_loop(cond, body, carry)
    # The last update's result has not been scored yet: score it too.
    last = per_sample_loss(z)
    best_z = jnp.where((last < best)[:, None], z, best_z)
    best = jnp.minimum(last, best).reshape(B, R)
    pick = jnp.argmin(best, axis=1)
    latents = jnp.take_along_axis(best_z.reshape(B, R, latent_dim), pick[:, None, None],
                                  axis=1)[:, 0]
    return SearchResult(latents, jnp.min(best, axis=1), best, curves, steps_run)

  if mesh is None:
    return jax.jit(search)
  rep, data = mesh_lib.replicated(mesh), lambda n: mesh_lib.batch_sharding(mesh, n)
  curves_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(None, 'data'))
  return jax.jit(search, in_shardings=(rep, data(4)),
                 out_shardings=SearchResult(data(2), data(1), data(2), curves_sharding, rep))
