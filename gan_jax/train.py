"""GAN training steps: non-saturating loss with R1, or WGAN-GP; EMA generator; one jit.

`make_train_step(...)` returns `step(state, real [B, H, W, C], key) -> (state, metrics)`,
jit-compiled over the mesh (batch sharded over 'data', state replicated). Each call does one
discriminator update then one generator update, and moves the EMA generator.

Losses (D(x) are logits):
  'ns_r1':   L_D = softplus(D(G(z))) + softplus(-D(x)) + gamma/2 * |grad_x D(x)|^2
             L_G = softplus(-D(G(z)))                       (Mescheder et al. 2018)
  'wgan_gp': L_D = D(G(z)) - D(x) + lambda * (|grad D(x_hat)| - 1)^2 + 1e-3 * D(x)^2
             L_G = -D(G(z))                                 (Gulrajani et al. 2017)
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from gan_jax import generators
from gan_jax.models_dcgan import DCGANDiscriminator
from vision_core import mesh as mesh_lib
from vision_core.errors import UserInputError


def make_optimizer(lr: float, b1: float, b2: float) -> optax.GradientTransformation:
  return optax.adam(lr, b1=b1, b2=b2)


def init_state(config, key) -> dict[str, Any]:
  """{'g', 'd', 'ema', 'g_opt', 'd_opt', 'step'} for `config.generator` / `config.discriminator`."""
  g_params = generators.init_params(config.generator.to_dict(),
                                    seed=int(jax.random.randint(key, (), 0, 2 ** 30)))
  d = DCGANDiscriminator(**config.discriminator)
  size, channels = config.generator.image_size, config.generator.channels
  d_params = jax.jit(d.init)(jax.random.fold_in(key, 1),
                             jnp.zeros((1, size, size, channels)))['params']
  g_tx = make_optimizer(config.lr_g, config.adam_b1, config.adam_b2)
  d_tx = make_optimizer(config.lr_d, config.adam_b1, config.adam_b2)
  # The EMA starts as a copy (its own buffer: the step donates the whole state).
  ema = jax.tree.map(lambda x: jnp.array(x, copy=True), g_params)
  return {'g': g_params, 'd': d_params, 'ema': ema, 'g_opt': g_tx.init(g_params),
          'd_opt': d_tx.init(d_params), 'step': jnp.zeros((), jnp.int32)}


def make_train_step(*, config, mesh):
  """The jit-compiled training step for `config` (see module docstring)."""
  if config.loss not in ('ns_r1', 'wgan_gp'):
    raise UserInputError(f"config.loss={config.loss!r}: expected 'ns_r1' or 'wgan_gp'.")
  g_module = generators.build(config.generator.to_dict())
  d_module = DCGANDiscriminator(**config.discriminator)
  g_tx = make_optimizer(config.lr_g, config.adam_b1, config.adam_b2)
  d_tx = make_optimizer(config.lr_d, config.adam_b1, config.adam_b2)
  latent = generators.latent_dim(config.generator.to_dict())
  D = lambda p, x: d_module.apply({'params': p}, x)
  G = lambda p, z: g_module.apply({'params': p}, z)

  def d_loss_fn(d_params, g_params, real, key):
    z_key, mix_key = jax.random.split(key)
    fake = jax.lax.stop_gradient(G(g_params, jax.random.normal(z_key, (real.shape[0], latent))))
    d_real, d_fake = D(d_params, real), D(d_params, fake)
    # Gradient of D w.r.t. its input, per sample (samples are independent in D).
    input_grad = lambda x: jax.grad(lambda v: jnp.sum(D(d_params, v)))(x)
    if config.loss == 'ns_r1':
      grad = input_grad(real)
      penalty = 0.5 * config.r1_gamma * jnp.mean(jnp.sum(jnp.square(grad), axis=(1, 2, 3)))
      adv = jnp.mean(jax.nn.softplus(d_fake) + jax.nn.softplus(-d_real))
    else:
      eps = jax.random.uniform(mix_key, (real.shape[0], 1, 1, 1))
      grad = input_grad(eps * real + (1 - eps) * fake)
      norm = jnp.sqrt(jnp.sum(jnp.square(grad), axis=(1, 2, 3)) + 1e-12)
      penalty = config.gp_lambda * jnp.mean(jnp.square(norm - 1.0))
      adv = jnp.mean(d_fake - d_real) + 1e-3 * jnp.mean(jnp.square(d_real))
    return adv + penalty, {'d_loss': adv, 'penalty': penalty,
                           'd_real': jnp.mean(d_real), 'd_fake': jnp.mean(d_fake)}

  def g_loss_fn(g_params, d_params, batch, key):
    logits = D(d_params, G(g_params, jax.random.normal(key, (batch, latent))))
    loss = jnp.mean(jax.nn.softplus(-logits)) if config.loss == 'ns_r1' else -jnp.mean(logits)
    return loss

  def step(state, real, key):
    d_key, g_key = jax.random.split(jax.random.fold_in(key, state['step']))
    (_, d_metrics), d_grads = jax.value_and_grad(d_loss_fn, has_aux=True)(
        state['d'], state['g'], real, d_key)
    d_updates, d_opt = d_tx.update(d_grads, state['d_opt'], state['d'])
    d_params = optax.apply_updates(state['d'], d_updates)
    g_loss, g_grads = jax.value_and_grad(g_loss_fn)(state['g'], d_params, real.shape[0], g_key)
    g_updates, g_opt = g_tx.update(g_grads, state['g_opt'], state['g'])
    g_params = optax.apply_updates(state['g'], g_updates)
    ema = jax.tree.map(lambda e, p: config.ema_decay * e + (1 - config.ema_decay) * p,
                       state['ema'], g_params)
    new = {'g': g_params, 'd': d_params, 'ema': ema, 'g_opt': g_opt, 'd_opt': d_opt,
           'step': state['step'] + 1}
    return new, {**d_metrics, 'g_loss': g_loss}

  rep = mesh_lib.replicated(mesh)
  return jax.jit(step, in_shardings=(rep, mesh_lib.batch_sharding(mesh, 4), rep),
                 out_shardings=(rep, rep), donate_argnums=0)


def image_grid(images_uint8: np.ndarray, columns: int = 8, pad: int = 2) -> np.ndarray:
  """`[N, H, W, C]` uint8 -> one `[rows*(H+pad)+pad, cols*(W+pad)+pad, C]` uint8 grid."""
  n, h, w, c = images_uint8.shape
  rows = -(-n // columns)
  grid = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
  for i, image in enumerate(images_uint8):
    r, col = divmod(i, columns)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + col * (w + pad):pad + col * (w + pad) + w] = image
  return grid


def pixel_frechet_distance(real, fake, *, max_dim: int = 1024) -> float:
  """The Frechet distance between Gaussians fit to *raw pixels* in [0, 1] (area-downsampled
  by 2 until <= max_dim values), NOT an Inception/ViT FID (`gan_jax.fid_vit` is that).

  Args: uint8 `[N, H, W, C]` arrays (same shapes).
  """
  from vit_jax import metrics  # pylint: disable=g-import-not-at-top

  def feats(x):
    x = np.asarray(x, np.float64) / 255.0
    while np.prod(x.shape[1:]) > max_dim and x.shape[1] % 2 == 0:
      n, h, w, c = x.shape
      x = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    return x.reshape(len(x), -1)
  return metrics.fid(feats(real), feats(fake))
