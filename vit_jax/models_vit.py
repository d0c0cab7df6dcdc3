"""The Vision Transformer, with the official parameter tree.

`VisionTransformer(num_classes=N, **model_config)` where `model_config` is an entry of
`vit_jax.configs.models`; `model.apply({'params': p}, images, train=False)` maps
`[B, H, W, 3]` images in [-1, 1] to logits `[B, N]`. Parameter names are those of the
checkpoints in gs://vit_models (after `vit_jax.checkpoint.load` renames pre-Linen modules):

  cls                                    [1, 1, D]   (classifier 'token' / 'token_unpooled')
  embedding/{kernel [p, p, C, D], bias}
  Transformer/posembed_input/pos_embedding [1, N_tokens, D]
  Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out},
                               LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}
  Transformer/encoder_norm
  pre_logits/{kernel, bias}              (only with representation_size)
  head/{kernel [D, N], bias [N]}         (zero-initialised)
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from vision_core.images import check_batch
from vit_jax import models_resnet

Dtype = Any
_DENSE_INIT = dict(kernel_init=nn.initializers.xavier_uniform(),
                   bias_init=nn.initializers.normal(stddev=1e-6))


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding `pos_embedding [1, N, D]` to `[B, N, D]` tokens."""
  posemb_init: Callable = nn.initializers.normal(stddev=0.02)

  @nn.compact
  def __call__(self, x):
    pos = self.param('pos_embedding', self.posemb_init, (1, x.shape[1], x.shape[2]))
    return x + pos.astype(x.dtype)


class MlpBlock(nn.Module):
  """Dense(mlp_dim) -> GELU (tanh approximation off) -> Dense(D); `[B, N, D]` -> same."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    out_dim = x.shape[-1]
    x = nn.Dense(self.mlp_dim, dtype=self.dtype, name='Dense_0', **_DENSE_INIT)(x)
    x = nn.gelu(x, approximate=False)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = nn.Dense(out_dim, dtype=self.dtype, name='Dense_1', **_DENSE_INIT)(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


class Encoder1DBlock(nn.Module):
  """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). `[B, N, D]` -> same."""
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, deterministic: bool):
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_0')(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, broadcast_dropout=False,
        dropout_rate=self.attention_dropout_rate, deterministic=deterministic,
        kernel_init=nn.initializers.xavier_uniform(), name='MultiHeadDotProductAttention_0')(y, y)
    x = x + nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
    y = nn.LayerNorm(dtype=self.dtype, name='LayerNorm_1')(x)
    y = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, name='MlpBlock_0')(
        y, deterministic=deterministic)
    return x + y


class Encoder(nn.Module):
  """Position embedding, `num_layers` blocks, final LayerNorm. `[B, N, D]` -> same."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    x = AddPositionEmbs(name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    for i in range(self.num_layers):
      x = Encoder1DBlock(self.mlp_dim, self.num_heads, self.dropout_rate,
                         self.attention_dropout_rate, self.dtype,
                         name=f'encoderblock_{i}')(x, deterministic=not train)
    return nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x)


class VisionTransformer(nn.Module):
  """ViT and R+ViT hybrids. `[B, H, W, 3]` in [-1, 1] -> logits `[B, num_classes]`.

  With classifier 'unpooled' / 'token_unpooled' the output keeps the token axis
  `[B, N, num_classes]`; with `num_classes=None` (or 0) the head is left out and the
  pre-logits come back. `dtype` is the compute dtype (bfloat16 for mixed precision);
  parameters stay float32.
  """
  num_classes: Optional[int]
  patches: Any
  transformer: Any
  hidden_size: int
  resnet: Optional[Any] = None
  representation_size: Optional[int] = None
  classifier: str = 'token'
  head_bias_init: float = 0.0
  model_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  channels: int = 3  # Input channels; checked so a wrong array fails with a clear message.

  @nn.compact
  def __call__(self, images, *, train: bool = False, return_prelogits: bool = False):
    if self.classifier not in ('token', 'gap', 'unpooled', 'token_unpooled'):
      raise ValueError(f'classifier={self.classifier!r}: expected one of token, gap, '
                       'unpooled, token_unpooled.')
    check_batch(images, name='VisionTransformer input', channels=(self.channels,))
    x = jnp.asarray(images, self.dtype)
    if self.resnet is not None:
      x = models_resnet.resnet_stem(x, num_layers=tuple(self.resnet.num_layers),
                                    width_factor=self.resnet.width_factor, dtype=self.dtype)
    patch = tuple(self.patches.size)
    x = nn.Conv(self.hidden_size, patch, strides=patch, padding='VALID', dtype=self.dtype,
                name='embedding')(x)
    if self.transformer is not None:
      b, h, w, d = x.shape
      x = x.reshape(b, h * w, d)
      if self.classifier in ('token', 'token_unpooled'):
        cls = self.param('cls', nn.initializers.zeros, (1, 1, d))
        x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (b, 1, 1)), x], axis=1)
      x = Encoder(name='Transformer', dtype=self.dtype, **self.transformer)(x, train=train)
    if self.classifier == 'token':
      x = x[:, 0]
    elif self.classifier == 'gap':
      x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    if self.representation_size is not None:
      x = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name='pre_logits')(x))
    if return_prelogits or not self.num_classes:
      return x
    return nn.Dense(self.num_classes, dtype=self.dtype, name='head',
                    kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.constant(self.head_bias_init))(x)
