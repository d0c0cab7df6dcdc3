"""The latent search: find z minimising loss(G(z), x), as ONE jit-compiled program.

All images of a batch and R random restarts per image are optimised together: the
generator runs once per step on a `[B * R, latent]` batch, each (image, restart) has its
own optimiser state (the update is vmapped), the step loop is a `lax.while_loop` in which
an image whose R trajectories have all plateaued freezes (the loop ends when all have), and
the batch is sharded over the mesh's 'data' axis. The best step of the best restart is kept
per image.

Each image's R initial latents are drawn from a key folded from (seed, the image's id, r),
the id being a hash of its pixels (`image_ids`): an image starts from the same latents
whether it is searched alone or with others, in any row of any batch, and two different
images of one batch never share a start.

On CPU the default (`loop='auto'`) runs the same step function as compiled chunks of
unrolled steps instead, because XLA:CPU executes convolutions inside a while-loop body
15-30x slower (jax-ml/jax#12868); `loop='while'` forces the single program.

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
import hashlib
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from vision_core import mesh as mesh_lib
from vision_core import seeds
from vision_core import xla_options
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
    stop_patience: an image stops (its latents and optimiser states freeze) once none of
      its R trajectories improved by more than stop_rtol (relative) for this many steps,
      whatever the other images of the batch do; the loop ends when every image has
      stopped. 0 disables early stopping.
    perceptual_weight: weight of the feature term (needs a features function).
    seed: for the random initial latents, in [0, 2**32). Restart r of an image starts from
      a function of (seed, the image's id, r) only (see `initial_latents`), so neither the
      batch size, nor the image's position, nor R changes it.
    loop: 'while' (the whole search is one program: a lax.while_loop), 'chunked'
      (compiled chunks of `chunk` unrolled steps driven from Python; XLA:CPU runs convs in
      while-loop bodies 15-30x slower, jax-ml/jax#12868), or 'auto' (chunked on CPU).
    chunk: steps per compiled chunk in 'chunked' mode.
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
  loop: str = 'auto'
  chunk: int = 10

  def validate(self) -> None:
    if self.optimizer not in ('sgd', 'adam'):
      raise UserInputError(f"optimizer={self.optimizer!r}: expected 'sgd' or 'adam'.")
    if self.loop not in ('auto', 'while', 'chunked') or self.chunk < 1:
      raise UserInputError(f"loop={self.loop!r}, chunk={self.chunk}: expected loop 'auto', "
                           "'while' or 'chunked' and chunk >= 1.")
    if self.steps < 1 or self.restarts < 1:
      raise UserInputError(f'steps={self.steps}, restarts={self.restarts}: both must be >= 1.')
    seeds.check_seed(self.seed, field='seed')


class SearchResult(NamedTuple):
  """latents `[B, L]` (best per image), loss `[B]`, restart_losses `[B, R]` (best of each
  restart), curves `[steps, B, R]` (loss per step; NaN after the image's early stop),
  steps_run `[B]` (steps each image took before it stopped)."""
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


def image_ids(images) -> np.ndarray:
  """`[B, ...]` images -> `[B, 2]` uint32: a 64-bit BLAKE2b hash of each image's dtype, shape
  and pixels, the identity that keys its initial latents (`initial_latents`).

  A content hash, not the position in a batch or call: an image gets the same start (and so
  the same latent) alone, with others, in any order or chunking; different images get
  different starts (64 bits: no collision in practice), identical images the same one.
  """
  images = np.asarray(images)
  out = np.empty((len(images), 2), np.uint32)
  for i, image in enumerate(images):
    h = hashlib.blake2b(f'{image.dtype.str}{image.shape}'.encode(), digest_size=8)
    h.update(np.ascontiguousarray(image).tobytes())
    out[i] = np.frombuffer(h.digest(), '<u4')
  return out


def initial_latents(key, ids, restarts: int, latent_dim: int):
  """`[B, R, L]` N(0, 1) latents for images with ids `[B, 2]` uint32 (`image_ids`).

  Restart r of an image is drawn from `fold_in(fold_in(fold_in(key, id[0]), id[1]), r)`: a
  function of (key, id, r) alone, whatever B, R or the image's row are.
  """
  def one(image_id):
    k = jax.random.fold_in(jax.random.fold_in(key, image_id[0]), image_id[1])
    return jnp.stack([jax.random.normal(jax.random.fold_in(k, r), (latent_dim,))
                      for r in range(restarts)])
  return jax.vmap(one)(jnp.asarray(ids, jnp.uint32))


def make_latent_search(apply_fn: Callable, *, latent_dim: int, config: SearchConfig,
                       mesh: Mesh | None = None,
                       features_fn: Callable | None = None,
                       compiler_options: dict[str, Any] | None = None) -> Callable:
  """Returns `search(params, targets [B, H, W, C], ids [B, 2]) -> SearchResult`, compiled.

  `ids` (uint32, `image_ids(targets)` for a content identity) key each image's initial
  latents: with the same ids, seed and settings, an image's start does not depend on the
  other images of the batch or on its row in it.

  Args:
    apply_fn: `(params, z [N, L]) -> images [N, H, W, C]`, per-sample (no batch coupling).
    latent_dim: L.
    config: see `SearchConfig`.
    mesh: if given, targets and latents are sharded over its 'data' axis (B must divide).
    features_fn: `images [N, H, W, C] -> [N, F]` for the perceptual term.
    compiler_options: XLA options of the step program. None chooses: on CPU without the
      perceptual term `xla_options.YNN_WITHOUT_REDUCE` where this jaxlib takes it (see
      below), else XLA's defaults; `{}` keeps XLA's defaults.
  """
  config.validate()
  if config.perceptual_weight and features_fn is None:
    raise UserInputError('perceptual_weight > 0 needs a features function (our ViT).')
  tx = make_optimizer(config)
  R, steps = config.restarts, config.steps

  def parts(params, targets, ids=None):
    """(init carry, one-step body, keep-running predicate, finish) for this batch; init
    needs the ids `[B, 2]`."""
    B = targets.shape[0]
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

    def init():
      z0 = initial_latents(jax.random.PRNGKey(config.seed), ids, R, latent_dim)
      z0 = z0.reshape(B * R, latent_dim)
      inf = jnp.full((B * R,), jnp.inf, jnp.float32)
      return (jnp.asarray(0), z0, jax.vmap(tx.init)(z0), inf, z0, inf,
              jnp.zeros((B * R,), jnp.int32), jnp.zeros((B,), jnp.int32),
              jnp.full((steps, B, R), jnp.nan, jnp.float32))

    def image_running(stale):
      """`[B]`: images with a trajectory that improved within stop_patience steps."""
      if not config.stop_patience:
        return jnp.ones((B,), bool)
      return jnp.any(stale.reshape(B, R) < config.stop_patience, axis=1)

    def body(carry):
      step, z, opt_state, best, best_z, ref, stale, ran, curves = carry
      active = image_running(stale)
      (_, loss), grads = grad_fn(z)
      improved = loss < ref * (1.0 - config.stop_rtol)
      updates, new_opt_state = update(grads, opt_state, z, loss)
      new = (optax.apply_updates(z, updates), new_opt_state, jnp.minimum(loss, best),
             jnp.where((loss < best)[:, None], z, best_z), jnp.where(improved, loss, ref),
             jnp.where(improved, 0, stale + 1))
      # A stopped image keeps its state, so that its result is the one it would have had
      # alone (the generator still runs on it: the batch's shape never changes).
      rows = jnp.repeat(active, R)
      keep = lambda n, o: jnp.where(rows.reshape(rows.shape + (1,) * (n.ndim - 1)), n, o)
      z, opt_state, best, best_z, ref, stale = jax.tree.map(
          keep, new, (z, opt_state, best, best_z, ref, stale))
      row = jnp.where(active[:, None], loss.reshape(B, R), jnp.nan)
      curves = jax.lax.dynamic_update_slice(curves, row[None],
                                            (jnp.minimum(step, steps - 1), 0, 0))
      return step + 1, z, opt_state, best, best_z, ref, stale, ran + active, curves

    def running(carry):
      step, stale = carry[0], carry[6]
      return (step < steps) & jnp.any(image_running(stale))

    def finish(carry):
      _, z, _, best, best_z, _, _, steps_run, curves = carry
      # The last update's result has not been scored yet: score it too.
      last = per_sample_loss(z)
      best_z = jnp.where((last < best)[:, None], z, best_z)
      best = jnp.minimum(last, best).reshape(B, R)
      pick = jnp.argmin(best, axis=1)
      latents = jnp.take_along_axis(best_z.reshape(B, R, latent_dim), pick[:, None, None],
                                    axis=1)[:, 0]
      return SearchResult(latents, jnp.min(best, axis=1), best, curves, steps_run)
    return init, body, running, finish

  def search(params, targets, ids):
    init, body, running, finish = parts(params, jnp.asarray(targets, jnp.float32), ids)
    return finish(jax.lax.while_loop(running, body, init()))

  shardings = {}
  if mesh is not None:
    rep, data = mesh_lib.replicated(mesh), lambda n: mesh_lib.batch_sharding(mesh, n)
    curves_sharding = jax.sharding.NamedSharding(mesh_lib.auto_axes(mesh),
                                                   jax.sharding.PartitionSpec(None, 'data'))
    shardings = dict(in_shardings=(rep, data(4), data(2)), out_shardings=SearchResult(
        data(2), data(1), data(2), curves_sharding, data(1)))
  # On CPU, without the ViT term: YNNPACK fusions without reductions. XLA:CPU otherwise
  # fuses each PixelNorm's backward channel sum into the convolution beside it, and that
  # fused op took 1.5x the plain convolution's time (PGAN, 32x32 input gradient: 2.2 ms
  # against 1.5 ms forward). Unfused, the PGAN search is 1.10x faster at 32 images
  # (docs/benchmarks.md, GAN run 14); the DCGAN search is unchanged. The ViT's softmax and
  # LayerNorm sums gain from the fusion instead (its train step is 1.3x slower without),
  # so the perceptual search keeps XLA's default. Only for this program: XLA_FLAGS would
  # change every program of the process.
  cpu = jax.default_backend() == 'cpu'
  options = compiler_options
  if options is None:
    options = (xla_options.accepted(xla_options.YNN_WITHOUT_REDUCE)
               if cpu and not config.perceptual_weight else {})
  loop = config.loop
  if loop == 'auto':
    loop = 'chunked' if cpu else 'while'
  if loop == 'while':
    return jax.jit(search, compiler_options=options, **shardings)

  # 'chunked': XLA:CPU runs convolutions inside a while loop's body many times slower than
  # the same convolutions outside one (measured 15-30x for our generators; jax-ml/jax#12868),
  # so on CPU the loop is unrolled into compiled chunks of `chunk` steps, driven from Python,
  # with the early-stop test between chunks. Steps past the end are computed but discarded.
  def placed(carry):
    """The carry pinned to one placement: per-sample rows over 'data', scalars whole. Left
    to XLA, `start`'s outputs came out whole and `chunk`'s split, and each placement was a
    compilation of `chunk` (~7 s each on a 2-core CPU for the DCGAN)."""
    if mesh is None:
      return carry
    *rows, curves = carry
    rows = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(
        a, rep if a.ndim == 0 else data(a.ndim)), tuple(rows))
    return (*rows, jax.lax.with_sharding_constraint(curves, curves_sharding))

  def start(params, targets, ids):
    return placed(parts(params, jnp.asarray(targets, jnp.float32), ids)[0]())

  def chunk(params, targets, carry):
    _, body, running, _ = parts(params, jnp.asarray(targets, jnp.float32))
    for _ in range(config.chunk):
      new = body(carry)
      keep = running(carry)
      carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, carry)
    return placed(carry), running(carry)

  def end(params, targets, carry):
    return parts(params, jnp.asarray(targets, jnp.float32))[3](carry)

  start_fn = jax.jit(start, **({'in_shardings': shardings['in_shardings']} if mesh else {}))
  chunk_fn = jax.jit(chunk, donate_argnums=2, compiler_options=options)
  end_fn = jax.jit(end)

  max_chunks = -(-steps // config.chunk)

  def chunked_search(params, targets, ids):
    # The next chunk is queued before the previous one's keep-running flag is read, so the
    # devices never wait for Python between chunks. A chunk after the stop changes nothing
    # (its steps are masked), so queueing one too many costs time only, never the result.
    carry, keep = chunk_fn(params, targets, start_fn(params, targets, ids))
    for _ in range(max_chunks - 1):
      carry, next_keep = chunk_fn(params, targets, carry)
      if not bool(keep):
        break
      keep = next_keep
    return end_fn(params, targets, carry)
  return chunked_search
