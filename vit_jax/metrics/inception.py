"""The FID Inception-v3 network in Flax: pool3 features `[B, 2048]` as pytorch-fid computes them.

This is the network of the original TensorFlow FID code (`inception-2015-12-05`), as ported by
pytorch-fid: torchvision's Inception-v3 layout with four differences in the mixed blocks
(FIDInceptionA/C/E_1 average-pool without counting the zero padding; FIDInceptionE_2, i.e.
Mixed_7c, max-pools in its pool branch). Every conv is conv (no bias) -> BatchNorm
(eps 1e-3) -> ReLU. Module names equal the PyTorch state-dict names, so
`inception_import` maps `Mixed_6b.branch7x7_2.conv.weight` to
`params['Mixed_6b']['branch7x7_2']['conv']['kernel']`.

Input convention (pytorch-fid's): `[B, H, W, 3]` RGB in [0, 1]; resized to 299x299 with
bilinear interpolation (half-pixel centres, no antialiasing, as `F.interpolate(...,
mode='bilinear', align_corners=False)`), then scaled to [-1, 1].
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

INPUT_SIZE = 299
FEATURE_DIM = 2048
MIN_SIZE = 75  # The smallest input the stride-2 stages accept when resize_input=False.


def _pairs(padding):
  ph, pw = (padding, padding) if isinstance(padding, int) else padding
  return ((ph, ph), (pw, pw))


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm(eps=1e-3, running statistics) -> ReLU."""
  features: int
  kernel: Sequence[int] | int
  stride: int = 1
  padding: Sequence[int] | int = 0

  @nn.compact
  def __call__(self, x):
    kernel = (self.kernel,) * 2 if isinstance(self.kernel, int) else tuple(self.kernel)
    x = nn.Conv(self.features, kernel, strides=self.stride, padding=_pairs(self.padding),
                use_bias=False, name='conv')(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name='bn')(x)
    return nn.relu(x)


def _avg_pool_same(x):
  """3x3 stride-1 average over the window's pixels inside the image (TensorFlow's SAME)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_valid(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class InceptionA(nn.Module):
  """Mixed_5b/5c/5d (FIDInceptionA)."""
  pool_features: int

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(64, 1, name='branch1x1')(x)
    b5 = BasicConv(48, 1, name='branch5x5_1')(x)
    b5 = BasicConv(64, 5, padding=2, name='branch5x5_2')(b5)
    b3 = BasicConv(64, 1, name='branch3x3dbl_1')(x)
    b3 = BasicConv(96, 3, padding=1, name='branch3x3dbl_2')(b3)
    b3 = BasicConv(96, 3, padding=1, name='branch3x3dbl_3')(b3)
    bp = BasicConv(self.pool_features, 1, name='branch_pool')(_avg_pool_same(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """Mixed_6a: grid reduction 35 -> 17."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(384, 3, stride=2, name='branch3x3')(x)
    bd = BasicConv(64, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv(96, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = BasicConv(96, 3, stride=2, name='branch3x3dbl_3')(bd)
    return jnp.concatenate([b3, bd, _max_pool_valid(x)], axis=-1)


class InceptionC(nn.Module):
  """Mixed_6b..6e (FIDInceptionC): factorised 7x7 convolutions."""
  channels_7x7: int

  @nn.compact
  def __call__(self, x):
    c7 = self.channels_7x7
    b1 = BasicConv(192, 1, name='branch1x1')(x)
    b7 = BasicConv(c7, 1, name='branch7x7_1')(x)
    b7 = BasicConv(c7, (1, 7), padding=(0, 3), name='branch7x7_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7_3')(b7)
    bd = BasicConv(c7, 1, name='branch7x7dbl_1')(x)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_2')(bd)
    bd = BasicConv(c7, (1, 7), padding=(0, 3), name='branch7x7dbl_3')(bd)
    bd = BasicConv(c7, (7, 1), padding=(3, 0), name='branch7x7dbl_4')(bd)
    bd = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7dbl_5')(bd)
    bp = BasicConv(192, 1, name='branch_pool')(_avg_pool_same(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """Mixed_7a: grid reduction 17 -> 8."""

  @nn.compact
  def __call__(self, x):
    b3 = BasicConv(192, 1, name='branch3x3_1')(x)
    b3 = BasicConv(320, 3, stride=2, name='branch3x3_2')(b3)
    b7 = BasicConv(192, 1, name='branch7x7x3_1')(x)
    b7 = BasicConv(192, (1, 7), padding=(0, 3), name='branch7x7x3_2')(b7)
    b7 = BasicConv(192, (7, 1), padding=(3, 0), name='branch7x7x3_3')(b7)
    b7 = BasicConv(192, 3, stride=2, name='branch7x7x3_4')(b7)
    return jnp.concatenate([b3, b7, _max_pool_valid(x)], axis=-1)


class InceptionE(nn.Module):
  """Mixed_7b (FIDInceptionE_1, pool='avg') and Mixed_7c (FIDInceptionE_2, pool='max')."""
  pool: str

  @nn.compact
  def __call__(self, x):
    b1 = BasicConv(320, 1, name='branch1x1')(x)
    b3 = BasicConv(384, 1, name='branch3x3_1')(x)
    b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name='branch3x3_2a')(b3),
                          BasicConv(384, (3, 1), padding=(1, 0), name='branch3x3_2b')(b3)], -1)
    bd = BasicConv(448, 1, name='branch3x3dbl_1')(x)
    bd = BasicConv(384, 3, padding=1, name='branch3x3dbl_2')(bd)
    bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name='branch3x3dbl_3a')(bd),
                          BasicConv(384, (3, 1), padding=(1, 0), name='branch3x3dbl_3b')(bd)],
                         -1)
    if self.pool == 'max':  # As the TF FID graph; torchvision's Inception averages here.
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_same(x)
    bp = BasicConv(192, 1, name='branch_pool')(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def resize_bilinear(images: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """`[B, H, W, C]` -> `[B, size, size, C]`, as torch's bilinear `align_corners=False`."""
  b, _, _, c = images.shape
  return jax.image.resize(images, (b, size, size, c), method='bilinear', antialias=False)


class FIDInceptionV3(nn.Module):
  """`[B, H, W, 3]` RGB in [0, 1] -> pool3 features `[B, 2048]`.

  Attributes:
    resize_input: resize to 299x299 first (pytorch-fid's default; FID values are only
      comparable with it on). Off, any size >= 75 runs (used by fast tests).
    dtype: compute dtype (float32 for reference numbers).
  """
  resize_input: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, images):
    x = jnp.asarray(images, self.dtype)
    if self.resize_input:
      x = resize_bilinear(x)
    x = 2.0 * x - 1.0
    x = BasicConv(32, 3, stride=2, name='Conv2d_1a_3x3')(x)
    x = BasicConv(32, 3, name='Conv2d_2a_3x3')(x)
    x = BasicConv(64, 3, padding=1, name='Conv2d_2b_3x3')(x)
    x = _max_pool_valid(x)
    x = BasicConv(80, 1, name='Conv2d_3b_1x1')(x)
    x = BasicConv(192, 3, name='Conv2d_4a_3x3')(x)
    x = _max_pool_valid(x)
    x = InceptionA(32, name='Mixed_5b')(x)
    x = InceptionA(64, name='Mixed_5c')(x)
    x = InceptionA(64, name='Mixed_5d')(x)
    x = InceptionB(name='Mixed_6a')(x)
    for name, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = InceptionC(c7, name=name)(x)
    x = InceptionD(name='Mixed_7a')(x)
    x = InceptionE('avg', name='Mixed_7b')(x)
    x = InceptionE('max', name='Mixed_7c')(x)
    return x.mean(axis=(1, 2)).astype(jnp.float32)
