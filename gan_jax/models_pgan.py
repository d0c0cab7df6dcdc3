"""The Progressive GAN generator of pytorch_GAN_zoo (`GNet`), as a pure flax.linen module.

Same computation as `models/networks/progressive_conv_net.py` of facebookresearch/
pytorch_GAN_zoo, in NHWC:

  z [B, L] -> PixelNorm -> equalized Linear L -> 16*C0, viewed channel-major [B, C0, 4, 4]
  (PyTorch's NCHW `view`), transposed to [B, 4, 4, C0] -> LeakyReLU(0.2) -> PixelNorm
  -> [3x3 conv C0, LReLU, PixelNorm]                                 (groupScale0)
  -> per extra scale: nearest x2, then 2 x [3x3 conv, LReLU, PixelNorm]  (scaleLayers)
  -> 1x1 toRGB of the last scale, no activation                        (toRGBLayers[-1])
  With alpha > 0 the toRGB of the previous scale, upsampled x2, is blended in:
  out = alpha * up(toRGB[-2](x_prev)) + (1 - alpha) * toRGB[-1](x).

Equalized learning rate: weights are stored N(0, 1) and the layer's *output* (bias
included, as in pytorch_GAN_zoo's `ConstrainedLayer.forward`) is multiplied by
sqrt(2 / fan_in), fan_in = in_channels * kernel_h * kernel_w.

Parameter names follow the PyTorch state dict (`formatLayer`, `groupScale0_0`,
`scaleLayers_{i}_{j}`, `toRGBLayers_{i}`) so the importer is a plain relabelling.
"""

from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def pixel_norm(x, eps: float = 1e-8):
  """Divides each position's feature vector by its RMS over channels (last axis)."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def upscale2d(x, factor: int = 2):
  """Nearest-neighbour upsampling of `[B, H, W, C]` by an integer factor."""
  return jnp.repeat(jnp.repeat(x, factor, axis=1), factor, axis=2)


def upscale2d_conv3x3(x, kernel):
  """`conv3x3_same(upscale2d(x), kernel)` without forming the upsampled image.

  `[B, H, W, C]`, kernel `[3, 3, C, O]` -> `[B, 2H, 2W, O]`. After a nearest x2 upsample, an
  output pixel of row parity a (and column parity b) sees only two input rows (columns):
  for a = 0 rows i-1 (tap 0) and i (taps 1 + 2), for a = 1 rows i (taps 0 + 1) and i+1
  (tap 2). So each parity (a, b) is a 2x2 convolution of x itself, padded on the side its
  rows (columns) reach, and the four are interleaved: 16 multiply-adds per output pixel
  group instead of 36, the same function up to float rounding. Four convolutions with O
  outputs rather than one with 4 O on the 1-padded input: padded by one in total, each
  keeps its input's size, the case XLA:CPU hands to its fast (YNNPACK) kernels; the one
  wider convolution, of H+1 x W+1 outputs, ran on a slower path and needed its outputs
  sliced apart (the latent search 1.1x faster, docs/benchmarks.md run 12).
  """
  def pairs(k, axis):  # the parity-0 and parity-1 two-tap kernels along `axis`
    k0, k1, k2 = (jnp.take(k, i, axis) for i in range(3))
    return jnp.stack([k0, k1 + k2], axis), jnp.stack([k0 + k1, k2], axis)

  rows = pairs(kernel, 0)
  pad = ((1, 0), (0, 1))  # parity 0 reads rows (i-1, i), parity 1 rows (i, i+1)
  y = [[jax.lax.conv_general_dilated(x, pairs(rows[a], 1)[c], (1, 1), (pad[a], pad[c]),
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
        for c in (0, 1)] for a in (0, 1)]
  b, h, w, _ = x.shape
  return jnp.stack([jnp.stack(row, axis=3) for row in y], axis=2).reshape(
      b, 2 * h, 2 * w, kernel.shape[-1])  # [B, H, a, W, b, O] -> [B, 2H, 2W, O]


class EqualizedDense(nn.Module):
  """`(x @ W + b) * sqrt(2 / in_features)`, W ~ N(0, 1). Kernel is `[in, out]`."""
  features: int

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.normal(1.0), (fan_in, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    return (x @ kernel + bias) * math.sqrt(2.0 / fan_in)


class EqualizedConv(nn.Module):
  """Same-padded stride-1 conv, output (bias included) times sqrt(2 / (k*k*in)).

  Kernel is `[k, k, in, out]` (HWIO). `upscale_input=True` convolves the nearest x2
  upsampled input, computed by `upscale2d_conv3x3` (3x3 kernels only; others are an error).
  """
  features: int
  kernel_size: int
  upscale_input: bool = False

  @nn.compact
  def __call__(self, x):
    k, cin = self.kernel_size, x.shape[-1]
    kernel = self.param('kernel', nn.initializers.normal(1.0), (k, k, cin, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    if self.upscale_input:
      if k != 3:
        raise ValueError(f'EqualizedConv(upscale_input=True) folds the upsample into a 3x3 '
                         f'kernel only; got kernel_size={k}.')
      y = upscale2d_conv3x3(x, kernel.astype(x.dtype))
    else:
      y = jax.lax.conv_general_dilated(
          x, kernel.astype(x.dtype), window_strides=(1, 1), padding='SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return (y + bias) * math.sqrt(2.0 / (k * k * cin))


class PGANGenerator(nn.Module):
  """pytorch_GAN_zoo's PGAN `GNet`: `[B, dim_latent]` -> `[B, S, S, dim_output]`, S = 4 * 2^n.

  Attributes:
    dim_latent: latent size (`dimLatentVector`, 512 for the celebAHQ models).
    depth_scale0: channels at 4x4 (`depthScale0`).
    depth_other_scales: channels of each further scale (`depthOtherScales`); the output
      side is 4 * 2 ** len(depth_other_scales).
    dim_output: image channels (3 RGB, 1 grey).
    leaky_relu_leak: negative slope (`leakyReluLeak`, 0.2).
    normalization: PixelNorm on z and after every layer (`perChannelNormalization`).
    alpha: blending with the previous scale's toRGB (0 = last scale only, the trained
      model's final state).
  """
  dim_latent: int = 512
  depth_scale0: int = 512
  depth_other_scales: Sequence[int] = ()
  dim_output: int = 3
  leaky_relu_leak: float = 0.2
  normalization: bool = True
  alpha: float = 0.0

  @property
  def output_size(self) -> int:
    return 4 * 2 ** len(self.depth_other_scales)

  @nn.compact
  def __call__(self, z):
    act = lambda v: nn.leaky_relu(v, self.leaky_relu_leak)
    norm = pixel_norm if self.normalization else (lambda v: v)
    x = norm(z.reshape(z.shape[0], -1))
    x = act(EqualizedDense(16 * self.depth_scale0, name='formatLayer')(x))
    # PyTorch views the 16*C features as [B, C, 4, 4]: channel-major. Keep that order.
    x = x.reshape(x.shape[0], self.depth_scale0, 4, 4).transpose(0, 2, 3, 1)
    # pytorch_GAN_zoo applies this norm unconditionally (no `is not None` check).
    x = pixel_norm(x)
    x = norm(act(EqualizedConv(self.depth_scale0, 3, name='groupScale0_0')(x)))
    to_rgb = [EqualizedConv(self.dim_output, 1, name=f'toRGBLayers_{i}')
              for i in range(len(self.depth_other_scales) + 1)]
    blend = None
    n = len(self.depth_other_scales)
    if self.alpha > 0 and n == 1:
      blend = upscale2d(to_rgb[-2](x))
    for scale, depth in enumerate(self.depth_other_scales):
      # The x2 upsample is folded into the scale's first conv (see upscale2d_conv3x3).
      for j in range(2):
        x = norm(act(EqualizedConv(depth, 3, upscale_input=(j == 0),
                                   name=f'scaleLayers_{scale}_{j}')(x)))
      if self.alpha > 0 and scale == n - 2:
        blend = upscale2d(to_rgb[-2](x))
    out = to_rgb[-1](x)
    if blend is not None:
      out = self.alpha * blend + (1.0 - self.alpha) * out
    if self.is_initializing():
      # Every scale's toRGB is in pytorch_GAN_zoo's state dicts, used or not: create them.
      depths = [self.depth_scale0, *self.depth_other_scales]
      for layer, depth in zip(to_rgb[:-1], depths[:-1]):
        layer(jnp.zeros((1, 1, 1, depth), x.dtype))
    return out
