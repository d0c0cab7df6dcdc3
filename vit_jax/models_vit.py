"""The Vision Transformer, with the official parameter tree.

`VisionTransformer(num_classes=N, **model_config)` where `model_config` is an entry of
`vit_jax.configs.models`; `model.apply({'params': p}, images, train=False)` maps
`[B, H, W, 3]` images in [-1, 1] to logits `[B, N]`. Parameter names are those of the
checkpoints in gs://vit_models (after `vit_jax.checkpoint.load` renames pre-Linen modules):

  cls                                    [1, 1, D]   (classifier 'token' / 'token_unpooled')
  conv_root, gn_root, block{i}/unit{j}/  (R+ViT hybrids: the BiT ResNet stem, models_resnet)
  stem{i}_conv{0,1}, stem{i}_gn{0,1}     (hybrids with `conv_stem`: models_resnet.conv_stem)
  embedding/{kernel [p, p, C, D], bias}
  Transformer/posembed_input/pos_embedding [1, N_tokens, D]
  Transformer/encoderblock_{i}/LayerNorm_0, MultiHeadDotProductAttention_0/{query,key,value,out},
                               LayerNorm_1, MlpBlock_0/{Dense_0, Dense_1}
  Transformer/encoder_norm
  pre_logits/{kernel, bias}              (only with representation_size)
  head/{kernel [D, N], bias [N]}         (zero-initialised)
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp

from vision_core import fused_norm
from vision_core.images import check_batch
from vit_jax import models_resnet
from vit_jax.layers import (ATTENTIONS, CUDNN_SEQ_MULTIPLE, Dtype, LayerNormParams, MlpBlock,
                            SelfAttention)
from vit_jax.ops import PatchEmbedding

# `VisionTransformer(patch_embedding=...)`: nn.Conv, or PatchEmbedding's single matmul.
PATCH_EMBEDDINGS = ('conv', 'matmul')


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding `pos_embedding [1, N, D]` to `[B, N, D]` tokens."""
  posemb_init: Callable = nn.initializers.normal(stddev=0.02)

  @nn.compact
  def __call__(self, x):
    pos = self.param('pos_embedding', self.posemb_init, (1, x.shape[1], x.shape[2]))
    return x + pos.astype(x.dtype)


class Encoder1DBlock(nn.Module):
  """Pre-norm transformer block: x + Attn(LN(x)), then x + MLP(LN(x)). `[B, N, D]` -> same,
  with the last add left to the caller (`__call__`)."""
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.0
  attention_dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'
  gelu_approximate: bool = True
  mlp_impl: str = 'xla'
  mlp_tiles: Optional[Any] = None
  norm_impl: str = 'xla'  # fused_norm.IMPLS

  @nn.compact
  def __call__(self, x, pending=None, *, deterministic: bool,
               num_outputs: int | None = None, valid_tokens: int | None = None):
    """`x [B, N, D]`: the residual stream; `pending` (or None): the previous block's output
    and its bias (`[D]` or None), not yet added to it. Returns `(stream, (output, bias))`,
    this block's output (the MLP's) left pending in turn: each add is done by the pass that
    also normalises its result for the next LayerNorm (fused_norm.add_normalize; the caller
    adds the last block's).

    With `num_outputs`, only the first `num_outputs` tokens are computed and returned
    (`[B, num_outputs, D]`): exact for them, since each token's output depends on the other
    tokens only through attention's keys and values. `valid_tokens`: tokens after the first
    `valid_tokens` are padding, never attended to."""
    # LayerNorm_0/1 are applied as normalize() + their scale/bias folded into the weights
    # of the matmul that follows: same parameters and result, less activation-sized work.
    # Each output comes back without its bias, added with the residual (`pending` is a
    # (y, bias) pair): with norm_impl='pallas' no pass of its own adds it.
    width = x.shape[-1]
    add_normalize = functools.partial(fused_norm.add_normalize, impl=self.norm_impl)
    x, normed = add_normalize(x, *(pending or (None, None)))
    y, bias = SelfAttention(num_heads=self.num_heads, dtype=self.dtype,
                            dropout_rate=self.attention_dropout_rate,
                            attention=self.attention, separate_bias=True,
                            name='MultiHeadDotProductAttention_0')(
                                normed, deterministic=deterministic, num_queries=num_outputs,
                                norm=LayerNormParams(name='LayerNorm_0')(width),
                                valid_tokens=valid_tokens)
    if num_outputs is not None:
      x = x[:, :num_outputs]
    if self.dropout_rate > 0 and not deterministic:  # dropout follows the bias
      y, bias = nn.Dropout(self.dropout_rate)(y + bias, deterministic=False), None
    x, normed = add_normalize(x, y, bias)
    pending = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.gelu_approximate,
                       self.mlp_impl, self.mlp_tiles, separate_bias=True, name='MlpBlock_0')(
                           normed, deterministic=deterministic,
                           norm=LayerNormParams(name='LayerNorm_1')(width))
    return x, pending


class Encoder(nn.Module):
  """Position embedding, `num_layers` blocks, final LayerNorm. `[B, N, D]` -> same."""
  num_layers: int
  mlp_dim: int
  num_heads: int
  dropout_rate: float = 0.1
  attention_dropout_rate: float = 0.1
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'
  gelu_approximate: bool = True
  # Pad the token axis to a multiple of this once, after the position embedding, instead of
  # padding q/k/v in every layer (attention='cudnn'); padded tokens are masked out of the
  # keys and dropped before the last block (or at the end), so the result is unchanged.
  token_multiple: int = 1
  mlp_impl: str = 'xla'
  mlp_tiles: Optional[Any] = None
  norm_impl: str = 'xla'

  @nn.compact
  def __call__(self, x, *, train: bool, num_outputs: int | None = None):
    """`num_outputs`: compute only the first tokens in the last block (e.g. 1 when only the
    class token is read), which skips most of that block's work."""
    x = AddPositionEmbs(name='posembed_input')(x)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    tokens = x.shape[1]
    pad = -tokens % self.token_multiple
    if pad:
      x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))  # zero tokens: LayerNorm maps them to 0
    pending = None  # the last block's (output, bias), added by the next block's first pass
    for i in range(self.num_layers):
      last = i == self.num_layers - 1
      if last and num_outputs is not None:
        x = x[:, :tokens]
        pending = None if pending is None else (pending[0][:, :tokens], pending[1])
      block = Encoder1DBlock(self.mlp_dim, self.num_heads, self.dropout_rate,
                             self.attention_dropout_rate, self.dtype, self.attention,
                             self.gelu_approximate, self.mlp_impl, self.mlp_tiles,
                             self.norm_impl, name=f'encoderblock_{i}')
      x, pending = block(x, pending, deterministic=not train,
                         num_outputs=num_outputs if last else None,
                         valid_tokens=tokens if x.shape[1] > tokens else None)
    if pending is not None:
      y, bias = pending
      x = x + (y if bias is None else y + bias)
    return nn.LayerNorm(epsilon=fused_norm.EPS, dtype=self.dtype, name='encoder_norm')(
        x[:, :tokens])


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
  # {'features': (C1, ..., CS)}: S conv stages, each halving the resolution, before the
  # patch embedding (models_resnet.conv_stem).
  conv_stem: Optional[Any] = None
  representation_size: Optional[int] = None
  classifier: str = 'token'
  head_bias_init: float = 0.0
  model_name: Optional[str] = None
  dtype: Dtype = jnp.float32
  # 'einsum' (ours, any backend), or jax.nn.dot_product_attention's 'xla' / 'cudnn'.
  attention: str = 'einsum'
  # The official checkpoints use the tanh GELU; False for models trained with the exact one.
  gelu_approximate: bool = True
  # Pad the token sequence to a multiple of this in the encoder (masked; same result).
  # None: CUDNN_SEQ_MULTIPLE with attention='cudnn' (its kernels need it), else 1.
  token_multiple: Optional[int] = None
  channels: int = 3  # Input channels; checked so a wrong array fails with a clear message.
  # MLP_IMPLS: 'pallas' puts the MLP's bias and GELU inside its matmuls (GPU; tanh GELU
  # only; XLA's ops where the widths do not tile or dropout is on); `mlp_tiles`: as
  # MlpBlock's `tiles`.
  mlp_impl: str = 'xla'
  mlp_tiles: Optional[Any] = None
  # PATCH_EMBEDDINGS: the strided convolution, or the same map as one matmul over flattened
  # patches (PatchEmbedding); the same `embedding` parameters either way.
  patch_embedding: str = 'conv'
  # fused_norm.IMPLS: 'pallas' does each residual add and the LayerNorm after it in one
  # pass over memory, forward and backward (GPU kernels); 'xla': XLA's ops.
  norm_impl: str = 'xla'

  @nn.compact
  def __call__(self, images, *, train: bool = False, return_prelogits: bool = False):
    if self.classifier not in ('token', 'gap', 'unpooled', 'token_unpooled'):
      raise ValueError(f'classifier={self.classifier!r}: expected one of token, gap, '
                       'unpooled, token_unpooled.')
    check_batch(images, name='VisionTransformer input', channels=(self.channels,))
    x = jnp.asarray(images, self.dtype)
    if self.resnet is not None:
      x = models_resnet.resnet_stem(x, num_layers=tuple(self.resnet['num_layers']),
                                    width_factor=self.resnet['width_factor'], dtype=self.dtype)
    if self.conv_stem is not None:
      x = models_resnet.conv_stem(x, features=tuple(self.conv_stem['features']), dtype=self.dtype)
    # Item access: the sub-configs may be ConfigDicts or plain dicts (model.json's).
    patch = tuple(self.patches['size'])
    if self.patch_embedding == 'conv':
      x = nn.Conv(self.hidden_size, patch, strides=patch, padding='VALID', dtype=self.dtype,
                  name='embedding')(x)
    elif self.patch_embedding == 'matmul':
      x = PatchEmbedding(self.hidden_size, patch, self.dtype, name='embedding')(x)
    else:
      raise ValueError(f'patch_embedding={self.patch_embedding!r}: expected one of '
                       f'{PATCH_EMBEDDINGS}.')
    if self.transformer is not None:
      b, h, w, d = x.shape
      x = x.reshape(b, h * w, d)
      if self.classifier in ('token', 'token_unpooled'):
        cls = self.param('cls', nn.initializers.zeros, (1, 1, d))
        x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), (b, 1, 1)), x], axis=1)
      # Only the class token leaves the encoder with classifier='token'.
      if self.attention not in ATTENTIONS:
        raise ValueError(f'attention={self.attention!r}: expected one of {ATTENTIONS}.')
      multiple = self.token_multiple
      if multiple is None:
        multiple = CUDNN_SEQ_MULTIPLE if self.attention == 'cudnn' else 1
      if not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f'token_multiple={multiple!r}: expected a positive integer.')
      x = Encoder(name='Transformer', dtype=self.dtype, attention=self.attention,
                  gelu_approximate=self.gelu_approximate, token_multiple=multiple,
                  mlp_impl=self.mlp_impl, mlp_tiles=self.mlp_tiles,
                  norm_impl=self.norm_impl, **self.transformer)(
          x, train=train, num_outputs=1 if self.classifier == 'token' else None)
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
