"""The ResNet (BiT-style) stem of the hybrid R+ViT models.

Convolutions are weight-standardised and followed by GroupNorm, as in Big Transfer; the
parameter names (`conv_root`, `gn_root`, `block{i}/unit{j}/{conv,gn}{1,2,3}`, `conv_proj`,
`gn_proj`) are those of the official hybrid checkpoints.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from vision_core.errors import UserInputError


def weight_standardize(w, axis, eps):
  """Zero mean, unit variance over `axis` (the kernel's input dimensions)."""
  w = w - jnp.mean(w, axis=axis, keepdims=True)
  return w / jnp.sqrt(jnp.var(w, axis=axis, keepdims=True) + eps)


class StdConv(nn.Conv):
  """`nn.Conv` whose kernel `[kh, kw, in, out]` is standardised over `(kh, kw, in)`."""

  def param(self, name, *args, **kwargs):
    value = super().param(name, *args, **kwargs)
    if name == 'kernel':
      value = weight_standardize(value, axis=[0, 1, 2], eps=1e-5)
    return value


class ResidualUnit(nn.Module):
  """Bottleneck unit: 1x1 -> 3x3 (strided) -> 1x1 (4x wider), projection when shapes change.

  `[B, H, W, C]` -> `[B, H / s, W / s, 4 * features]`.
  """
  features: int
  strides: Sequence[int] = (1, 1)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    needs_projection = x.shape[-1] != self.features * 4 or tuple(self.strides) != (1, 1)
    conv = lambda f, k, s, name: StdConv(f, k, s, use_bias=False, name=name, dtype=self.dtype)
    norm = lambda name, **kw: nn.GroupNorm(name=name, dtype=self.dtype, **kw)
    residual = x
    if needs_projection:
      residual = conv(self.features * 4, (1, 1), self.strides, 'conv_proj')(residual)
      residual = norm('gn_proj')(residual)
    y = nn.relu(norm('gn1')(conv(self.features, (1, 1), (1, 1), 'conv1')(x)))
    y = nn.relu(norm('gn2')(conv(self.features, (3, 3), self.strides, 'conv2')(y)))
    # Zero-initialised last norm scale: each unit starts as the identity (as in BiT).
    y = norm('gn3', scale_init=nn.initializers.zeros)(
        conv(self.features * 4, (1, 1), (1, 1), 'conv3')(y))
    return nn.relu(residual + y)


class ResNetStage(nn.Module):
  """`block_size` residual units; the first one may stride."""
  block_size: int
  nout: int
  first_stride: Sequence[int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = ResidualUnit(self.nout, strides=self.first_stride, dtype=self.dtype, name='unit1')(x)
    for i in range(1, self.block_size):
      x = ResidualUnit(self.nout, strides=(1, 1), dtype=self.dtype, name=f'unit{i + 1}')(x)
    return x


def resnet_stem(x, *, num_layers: Sequence[int], width_factor: float = 1,
                dtype: Any = jnp.float32):
  """Root conv (7x7 / 2) + GroupNorm + max-pool (3x3 / 2), then the stages.

  Call inside the parent's `nn.compact` method: the layers are created in the parent's scope,
  so their names (`conv_root`, `gn_root`, `block1`, ...) sit at the top of the parameter tree,
  as in the official hybrid checkpoints.

  `[B, H, W, 3]` -> `[B, H / 2^(2 + stages - 1), ..., 4 * width * 2^(stages - 1)]`; with no
  stages (R+ViT-Ti) the root alone downsamples by 4 and keeps `width` channels.

  Args:
    num_layers: units per stage, e.g. `(3, 4, 9)` for R50+ViT-B/16.
    width_factor: multiplies the base width 64.
  """
  width = int(64 * width_factor)
  x = StdConv(width, (7, 7), (2, 2), use_bias=False, name='conv_root', dtype=dtype)(x)
  x = nn.relu(nn.GroupNorm(name='gn_root', dtype=dtype)(x))
  x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
  if num_layers:
    x = ResNetStage(num_layers[0], width, (1, 1), dtype, name='block1')(x)
    for i, block_size in enumerate(num_layers[1:], 1):
      x = ResNetStage(block_size, width * 2**i, (2, 2), dtype, name=f'block{i + 1}')(x)
  return x


def max_pool_2x2(x):
  """2x2 max-pool with stride 2 (VALID): `[B, H, W, C]` -> `[B, H // 2, W // 2, C]`.

  The values of `nn.max_pool(x, (2, 2), strides=(2, 2))`, from a reshape and a max: XLA:CPU
  runs reduce_window's gradient (select-and-scatter) as iota + scatter, a third of the CIFAR
  hybrid's train step, where the max's gradient is a mask. Where pixels of a window tie, the
  gradient is shared among them rather than given to the first; both are subgradients.
  """
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


def conv_stem(x, *, features: Sequence[int], dtype: Any = jnp.float32):
  """A convolutional stem of `len(features)` stages, each halving the resolution.

  Stage i: 3x3 conv to `features[i]`, 2x2 max-pool, GroupNorm, ReLU, 3x3 conv, GroupNorm,
  ReLU (convolutions weight-standardised, as in BiT). This is the layout of the fast CIFAR
  networks (Page's ResNet-9, Jordan's airbench): most work at low resolution, pooling right
  after the first conv. The ViT's `embedding` (patch size 1) then projects to the width.
  Layers are `stem{i}_conv{0,1}`, `stem{i}_gn{0,1}` in the parent's scope.

  `[B, H, W, C]` -> `[B, H / 2^S, W / 2^S, features[-1]]`, S = len(features).
  """
  if not features or any(f <= 0 or f % 32 for f in features):
    raise UserInputError(f'model.conv_stem.features={tuple(features)}: expected one or more '
                         'multiples of 32 (GroupNorm uses 32 groups).')
  for i, width in enumerate(features):
    conv = lambda name: StdConv(width, (3, 3), use_bias=False, name=name, dtype=dtype)
    x = max_pool_2x2(conv(f'stem{i}_conv0')(x))
    x = nn.relu(nn.GroupNorm(name=f'stem{i}_gn0', dtype=dtype)(x))
    x = nn.relu(nn.GroupNorm(name=f'stem{i}_gn1', dtype=dtype)(conv(f'stem{i}_conv1')(x)))
  return x
