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
import jax
import jax.numpy as jnp
import numpy as np

from vision_core import flash_attention, fused_mlp, fused_norm, gpu_target
from vision_core.images import check_batch
from vision_core.matmul import matmul
from vit_jax import models_resnet
from vit_jax.ops import PatchEmbedding, gelu

Dtype = Any
# `VisionTransformer(attention=...)`: ours (any backend), jax.nn.dot_product_attention's, or
# vision_core.flash_attention's Pallas kernels (GPU; 'pallas_interpret' on any backend).
ATTENTIONS = ('einsum', 'xla', 'cudnn', 'pallas', 'pallas_interpret')
# attention='pallas': q, k, v from one matmul, packed (flash_attention.attention_kvq); False
# takes three matmuls and flash_attention.attention (bench/gpu_suite.py --flash-unpacked).
PALLAS_PACKED_QKV = True
# `VisionTransformer(mlp_impl=...)`: XLA's ops, or vision_core.fused_mlp's GPU kernels (the
# bias and GELU inside the matmuls; 'pallas_interpret' runs them interpreted, on any backend).
MLP_IMPLS = ('xla', 'pallas', 'pallas_interpret')
# `VisionTransformer(patch_embedding=...)`: nn.Conv, or PatchEmbedding's single matmul.
PATCH_EMBEDDINGS = ('conv', 'matmul')
# attention='cudnn' pads the sequence to a multiple of this: cuDNN's training kernels refuse
# ViT's 197 tokens but take 200 (8 measured 1% faster than 64 on an H200).
CUDNN_SEQ_MULTIPLE = 8
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
  """Dense(mlp_dim) -> GELU -> Dense(D); `[B, N, D]` -> same."""
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Dtype = jnp.float32
  gelu_approximate: bool = True
  impl: str = 'xla'  # MLP_IMPLS
  # impl 'pallas': (forward or None, backward), each fused_mlp.Tiles (Triton) or
  # fused_mlp_mosaic.MosaicTiles (Mosaic GPU); None: Triton's defaults.
  tiles: Optional[Any] = None
  # True: return `(y without Dense_1's bias, the bias)`, for the caller to add in a pass it
  # makes anyway (vision_core.fused_norm); `(y, None)` where dropout follows the add.
  separate_bias: bool = False

  @nn.compact
  def __call__(self, x, *, deterministic: bool, norm=None):
    """`norm=(scale, bias)`: `x` is normalised but not yet scaled/shifted; the LayerNorm's
    affine part is folded into Dense_0's weights (`[D, M]` work instead of `[B, N, D]`)."""
    out_dim = x.shape[-1]
    kernel, bias = _DenseParams((out_dim,), (self.mlp_dim,),
                                bias_init=_DENSE_INIT['bias_init'], name='Dense_0')()
    kernel2, bias2 = _DenseParams((self.mlp_dim,), (out_dim,),
                                  bias_init=_DENSE_INIT['bias_init'], name='Dense_1')()
    if norm is not None:
      scale, shift = norm
      bias = bias + shift @ kernel
      kernel = kernel * scale[:, None]
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    kernel2, bias2 = kernel2.astype(self.dtype), bias2.astype(self.dtype)
    if self.impl not in MLP_IMPLS:
      raise ValueError(f'mlp_impl={self.impl!r}: expected one of {MLP_IMPLS}.')
    if self.impl != 'xla' and not self.gelu_approximate:
      raise ValueError(f'mlp_impl={self.impl!r} has the tanh GELU only: '
                       'gelu_approximate must be True.')
    if self.impl == 'pallas':
      gpu_target.require_gpu("mlp_impl='pallas'",
                             "'xla', or 'pallas_interpret' to run the same kernels interpreted")
    tiles = self.tiles or (fused_mlp.Tiles(), fused_mlp.Tiles())
    dropout = self.dropout_rate > 0 and not deterministic
    # Shapes that do not tile, and dropout between the matmuls, take XLA's ops.
    if (self.impl != 'xla' and not dropout
        and all(fused_mlp.fits(out_dim, self.mlp_dim, t) for t in tiles)):
      separate = self.separate_bias  # (no dropout on this path)
      y = fused_mlp.mlp(x.reshape(-1, out_dim).astype(self.dtype), kernel, bias, kernel2,
                        None if separate else bias2, *tiles, self.impl == 'pallas_interpret')
      y = y.reshape(x.shape[:-1] + (out_dim,))
      return (y, bias2) if separate else y
    x = matmul(x.astype(self.dtype), kernel) + bias
    x = gelu(x, self.gelu_approximate)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
    x = matmul(x, kernel2)
    if self.separate_bias and not dropout:
      return x, bias2
    x = nn.Dropout(self.dropout_rate)(x + bias2, deterministic=deterministic)
    return (x, None) if self.separate_bias else x


class _DenseParams(nn.Module):
  """Just the `kernel [*in_shape, *out_shape]` and `bias [*out_shape]` of an `nn.DenseGeneral`.

  Same names, shapes and initialisation (the initializer sees the flattened 2-D kernel, as in
  DenseGeneral), so the parameter tree and init values are those of flax's attention module.
  """
  in_shape: tuple[int, ...]
  out_shape: tuple[int, ...]
  bias_init: Callable = nn.initializers.zeros

  @nn.compact
  def __call__(self):
    flat = (int(np.prod(self.in_shape)), int(np.prod(self.out_shape)))
    def kernel_init(key, shape, dtype=jnp.float32):
      return nn.initializers.xavier_uniform()(key, flat, dtype).reshape(shape)
    kernel = self.param('kernel', kernel_init, (*self.in_shape, *self.out_shape))
    bias = self.param('bias', self.bias_init, self.out_shape)
    return kernel, bias


class _LayerNormParams(nn.Module):
  """The `scale` and `bias` `[D]` of an `nn.LayerNorm`, for folding into the next matmul."""

  @nn.compact
  def __call__(self, width: int):
    return (self.param('scale', nn.initializers.ones, (width,)),
            self.param('bias', nn.initializers.zeros, (width,)))


class SelfAttention(nn.Module):
  """Multi-head self-attention, `[B, N, D]` -> `[B, N, D]`, with the parameter tree of
  `nn.MultiHeadDotProductAttention` (query/key/value `kernel [D, heads, D/heads]`, `bias
  [heads, D/heads]`; out `kernel [heads, D/heads, D]`, `bias [D]`).

  Computed for speed rather than by module: one matmul for q, k and v together, producing
  the `[B, heads, N, D/heads]` layout the attention matmuls want (no transposes between
  them), and the softmax in float32 whatever the compute dtype. Same maths as flax's module:
  q scaled by 1/sqrt(D/heads) before q.k, dropout on the attention weights.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  dropout_rate: float = 0.0
  attention: str = 'einsum'
  # True: return `(output without the `out` bias, the bias)`, for the caller to add.
  separate_bias: bool = False

  @nn.compact
  def __call__(self, x, *, deterministic: bool, num_queries: int | None = None, norm=None,
               valid_tokens: int | None = None):
    """`x [B, N, D]` -> `[B, N, D]`, or `[B, num_queries, D]`: only the first `num_queries`
    tokens attend (to all N), the rest of the output is not computed. `norm=(scale, bias)`:
    a LayerNorm's affine part, folded into the q/k/v weights (`x` is normalised already).
    `valid_tokens`: only the first `valid_tokens` tokens are keys; the rest are padding
    (their queries are computed like any other, so their outputs stay finite)."""
    _, _, width = x.shape
    heads = self.num_heads
    if width % heads:
      raise ValueError(f'hidden size {width} is not divisible by num_heads={heads}.')
    depth = width // heads
    projections = [_DenseParams((width,), (heads, depth), name=n)()
                   for n in ('query', 'key', 'value')]
    # 1/sqrt(depth) goes into the query weights ([D, H, Dh]), not the activations.
    scale = jnp.asarray([1.0 / np.sqrt(depth), 1.0, 1.0], jnp.float32)[:, None, None, None]
    kernel = jnp.stack([k for k, _ in projections]) * scale  # [3, D, H, Dh]
    bias = jnp.stack([b for _, b in projections]) * scale[..., 0]  # [3, H, Dh]
    if norm is not None:
      ln_scale, ln_bias = norm
      bias = bias + jnp.einsum('d,tdhk->thk', ln_bias, kernel)
      kernel = kernel * ln_scale[None, :, None, None]
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    x = x.astype(self.dtype)
    out_kernel, out_bias = _DenseParams((heads, depth), (width,), name='out')()
    out_bias = out_bias.astype(self.dtype)

    def output(y):  # [B, N, D] without the bias
      return (y, out_bias) if self.separate_bias else y + out_bias

    # A few queries (the class token of the last block) take the einsum path: tiny work,
    # and shapes fused kernels may not take.
    if self.attention != 'einsum' and num_queries is None:
      out = self._fused(x, kernel, bias, deterministic, valid_tokens)  # [B, N, H, Dh]
      return output(jnp.einsum('bnhc,hcd->bnd', out, out_kernel.astype(self.dtype)))
    if num_queries is None:
      qkv = jnp.einsum('bnd,tdhk->tbhnk', x, kernel) + bias[:, None, :, None, :]
      q, k, v = qkv[0], qkv[1], qkv[2]
    else:
      q = jnp.einsum('bnd,dhk->bhnk', x[:, :num_queries], kernel[0]) + bias[0][:, None, :]
      kv = jnp.einsum('bnd,tdhk->tbhnk', x, kernel[1:]) + bias[1:, None, :, None, :]
      k, v = kv[0], kv[1]
    logits = jnp.einsum('bhqc,bhkc->bhqk', q, k)
    if valid_tokens is not None and valid_tokens < k.shape[2]:
      keys = jnp.arange(k.shape[2]) < valid_tokens
      logits = jnp.where(keys, logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
    out = jnp.einsum('bhqk,bhkc->bhqc', weights, v)  # [B, H, N, Dh]
    return output(jnp.einsum('bhnc,hcd->bnd', out, out_kernel.astype(self.dtype)))

  def _fused(self, x, kernel, bias, deterministic, valid_tokens):
    """`[B, N, H, Dh]` by `jax.nn.dot_product_attention` in its own layout, with `attention`
    as its implementation: 'xla', or 'cudnn' (the fused flash-attention kernel of NVIDIA
    GPUs, bf16/fp16 only); or by vision_core.flash_attention ('pallas', which reads the
    tokens in place: no padding). Same maths; the attention weights are never
    materialised, so there is no attention dropout."""
    if self.dropout_rate > 0 and not deterministic:
      raise ValueError(f'attention={self.attention!r} has no attention dropout; set '
                       "attention_dropout_rate=0 or attention='einsum'.")
    batch, tokens = x.shape[:2]
    keys = tokens if valid_tokens is None else valid_tokens
    interpret = self.attention == 'pallas_interpret'
    if self.attention.startswith('pallas') and PALLAS_PACKED_QKV:
      # One matmul into [B, N, 3, H, Dh] (k, v, q), read in place by the kernels, which
      # write the gradient packed the same way: the input gradient is one matmul, not three
      # and a pass summing them. The kernels add the biases as they load q, k, v: XLA adds
      # each in a pass of its own over [B, N, H, Dh] (3.6 ms of the ViT-B/16 step on an
      # H100, session 18).
      order = jnp.array([1, 2, 0])
      kvq = jnp.einsum('bnd,tdhk->bnthk', x, kernel[order])
      return flash_attention.attention_kvq(kvq, keys, bias=bias[order], interpret=interpret)
    # Three matmuls straight into the [B, N, H, Dh] layout the fused kernel reads. One matmul
    # into [3, B, N, H, Dh] costs a transpose of q/k/v and of their gradients in every layer
    # (21% of the ViT-B/16 step on an H200: 143 -> 134 ms at batch 512).
    qkv = [jnp.einsum('bnd,dhk->bnhk', x, kernel[i]) for i in range(3)]
    if self.attention.startswith('pallas'):
      return flash_attention.attention(*qkv, keys, bias=bias, interpret=interpret)
    qkv = [t + b for t, b in zip(qkv, bias)]
    if self.attention == 'cudnn' and tokens % CUDNN_SEQ_MULTIPLE:
      # cuDNN's training kernels refuse odd lengths such as ViT's 197: pad q/k/v to a
      # multiple of CUDNN_SEQ_MULTIPLE, masked out of the keys, and drop the padded queries.
      # (The Encoder's `token_multiple` pads the token stream once instead, which saves
      # these copies in every layer.)
      pad = -tokens % CUDNN_SEQ_MULTIPLE
      qkv = [jnp.pad(t, ((0, 0), (0, pad), (0, 0), (0, 0))) for t in qkv]
    lengths = None
    if keys < qkv[1].shape[1]:
      lengths = jnp.full((batch,), keys, jnp.int32)
    out = jax.nn.dot_product_attention(qkv[0], qkv[1], qkv[2], scale=1.0,
                                       key_value_seq_lengths=lengths,
                                       implementation=self.attention)
    return out[:, :tokens]


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
                                norm=_LayerNormParams(name='LayerNorm_0')(width),
                                valid_tokens=valid_tokens)
    if num_outputs is not None:
      x = x[:, :num_outputs]
    if self.dropout_rate > 0 and not deterministic:  # dropout follows the bias
      y, bias = nn.Dropout(self.dropout_rate)(y + bias, deterministic=False), None
    x, normed = add_normalize(x, y, bias)
    pending = MlpBlock(self.mlp_dim, self.dropout_rate, self.dtype, self.gelu_approximate,
                       self.mlp_impl, self.mlp_tiles, separate_bias=True, name='MlpBlock_0')(
                           normed, deterministic=deterministic,
                           norm=_LayerNormParams(name='LayerNorm_1')(width))
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
    return nn.LayerNorm(dtype=self.dtype, name='encoder_norm')(x[:, :tokens])


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
      x = models_resnet.resnet_stem(x, num_layers=tuple(self.resnet.num_layers),
                                    width_factor=self.resnet.width_factor, dtype=self.dtype)
    if self.conv_stem is not None:
      x = models_resnet.conv_stem(x, features=tuple(self.conv_stem.features), dtype=self.dtype)
    patch = tuple(self.patches.size)
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
