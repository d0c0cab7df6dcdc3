"""DCGAN generator and discriminator for 28, 32 and 64 px images (flax.linen).

Radford et al.'s layout (doubling resolution per layer, stride-2 4x4 convs down, ReLU in
G, LeakyReLU(0.2) in D, tanh output), with two deliberate changes. Upsampling is nearest x2
then a 3x3 conv (as in PGAN) instead of a 4x4 stride-2 transposed conv: on XLA:CPU the
transposed conv (and its gradient) runs 7x slower (measured: 0.58 s vs 0.08 s for one
layer's gradient at batch 32), and it avoids checkerboard artifacts. And the generator
normalises with PixelNorm (per sample, stateless) instead of BatchNorm. A per-sample
generator makes the latent search exact and independent of which images share a batch,
needs no running statistics in the EMA copy, and trains stably with R1 (the
discriminator has no normalisation, which R1 and WGAN-GP require).

  28 px: 7x7 -> 14 -> 28      32 px: 4 -> 8 -> 16 -> 32      64 px: 4 -> ... -> 64
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp

from gan_jax.models_pgan import pixel_norm, upscale2d
from vision_core.errors import UserInputError

_START = {28: 7, 32: 4, 64: 4}


def _num_scales(image_size: int) -> int:
  if image_size not in _START:
    raise UserInputError(
        f'image_size={image_size}: the DCGAN family supports {sorted(_START)} px.')
  return {28: 2, 32: 3, 64: 4}[image_size]


class DCGANGenerator(nn.Module):
  """`[B, latent_dim]` -> `[B, S, S, channels]` in [-1, 1].

  Attributes:
    latent_dim: size of z (N(0, 1) prior).
    image_size: 28, 32 or 64.
    channels: 1 (grey) or 3 (RGB).
    width: channels of the last hidden layer; earlier layers double it per scale.
    normalization: 'pixel' (PixelNorm after every hidden layer) or 'none'.
  """
  latent_dim: int = 64
  image_size: int = 28
  channels: int = 1
  width: int = 32
  normalization: str = 'pixel'

  @property
  def output_size(self) -> int:
    return self.image_size

  @nn.compact
  def __call__(self, z):
    if self.normalization not in ('pixel', 'none'):
      raise UserInputError(f"normalization={self.normalization!r}: expected 'pixel' or 'none'.")
    norm = pixel_norm if self.normalization == 'pixel' else (lambda v: v)
    n, start = _num_scales(self.image_size), _START[self.image_size]
    x = nn.Dense(start * start * self.width * 2 ** n, name='project')(z)
    x = norm(nn.relu(x.reshape(z.shape[0], start, start, self.width * 2 ** n)))
    for i in range(n):
      x = upscale2d(x)
      x = nn.Conv(self.width * 2 ** (n - 1 - i), (3, 3), padding='SAME', name=f'up_{i}')(x)
      x = norm(nn.relu(x))
    x = nn.Conv(self.channels, (3, 3), padding='SAME', name='to_image')(x)
    return jnp.tanh(x)


class DCGANDiscriminator(nn.Module):
  """`[B, S, S, channels]` in [-1, 1] -> real/fake logits `[B]`."""
  image_size: int = 28
  width: int = 32

  @nn.compact
  def __call__(self, x):
    n = _num_scales(self.image_size)
    for i in range(n):
      x = nn.Conv(self.width * 2 ** i, (4, 4), strides=(2, 2), padding='SAME',
                  name=f'down_{i}')(x)
      x = nn.leaky_relu(x, 0.2)
    x = x.reshape(x.shape[0], -1)
    return nn.Dense(1, name='logit')(x)[:, 0]
