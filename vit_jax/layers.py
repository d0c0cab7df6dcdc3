"""The parts of a ViT encoder block, with the official checkpoints' parameter names
(models_vit assembles them): self-attention (ours, jax.nn.dot_product_attention's or
vision_core.flash_attention's kernels), the MLP (XLA's ops or vision_core.fused_mlp's
kernels), and the parameter holders whose values the fused paths fold or reorder.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_core import flash_attention, fused_mlp, gpu_target
from vision_core.matmul import matmul
from vit_jax.ops import gelu

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
# attention='cudnn' pads the sequence to a multiple of this: cuDNN's training kernels refuse
# ViT's 197 tokens but take 200 (8 measured 1% faster than 64 on an H200).
CUDNN_SEQ_MULTIPLE = 8
_DENSE_INIT = dict(kernel_init=nn.initializers.xavier_uniform(),
                   bias_init=nn.initializers.normal(stddev=1e-6))


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
    kernel, bias = DenseParams((out_dim,), (self.mlp_dim,),
                               bias_init=_DENSE_INIT['bias_init'], name='Dense_0')()
    kernel2, bias2 = DenseParams((self.mlp_dim,), (out_dim,),
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


class DenseParams(nn.Module):
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


class LayerNormParams(nn.Module):
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
  # True: return `(output before the 'out' bias, the bias)`, for the caller to add.
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
    projections = [DenseParams((width,), (heads, depth), name=n)()
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
    out_kernel, out_bias = DenseParams((heads, depth), (width,), name='out')()
    out_bias = out_bias.astype(self.dtype)

    def output(y):  # `y [B, N, D]`, before the `out` bias
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
