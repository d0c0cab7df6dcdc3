"""Image GPT (Chen et al., 2020), with OpenAI's parameter tree and an explicit KV cache.

`ImageGPT(**SIZES['S'])` maps palette tokens `[B, T]` (ints in [0, vocab)) to next-token
logits `[B, T, vocab]`. The input at position t is `sos` (t = 0) or `wte[x_{t-1}]`, plus
`wpe[t]`: the logits at t predict x_t. Parameter names are those of OpenAI's released TF
checkpoints with the leading `model/` removed:

  wte [V, D], wtet [V, D] (untied output embedding), wpe [n_ctx, D], sos [D]
  h{i}/ln_1/g [D], h{i}/attn/{q_proj,k_proj,v_proj,c_proj} [H, D/H, D], h{i}/ln_2/g [D],
  h{i}/mlp/c_fc/w [D, 4D], h{i}/mlp/c_proj/w [4D, D]
  ln_f/g [D]
  clf/wclf [classes, D]  (only with num_classes > 0; zero-initialised, like the release)

The norm is OpenAI's: `x * rsqrt(mean(x^2) + 1e-5) * g`, no mean subtraction and no bias;
the MLP activation is `x * sigmoid(1.702 x)`; there are no biases anywhere. With `bert=True`
the model is the release's BERT variant: no `sos`, no causal mask, masked tokens zeroed.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_core import flash_attention, gpu_target
from vision_core.errors import UserInputError
from vision_core.matmul import matmul

Dtype = Any
Cache = list  # One dict(k=[B, H, n_ctx, D/H], v=same) per layer.

# (width, heads, layers) of the released models and of small configs that train on a CPU.
SIZES = {
    'S': dict(width=512, num_heads=8, num_layers=24),
    'M': dict(width=1024, num_heads=8, num_layers=36),
    'L': dict(width=1536, num_heads=16, num_layers=48),
    'mini': dict(width=256, num_heads=8, num_layers=8),
    'tiny': dict(width=128, num_heads=4, num_layers=4),
    'testing': dict(width=32, num_heads=4, num_layers=2),
}
NORM_EPSILON = 1e-5
# Tensor parallelism over the mesh's 'model' axis (vision_core.sharding's 'tp' and 'fsdp_tp'),
# by parameter path: attention's heads ([H, D/H, D] q/k/v/c_proj) and the MLP's hidden axis
# are split, so each block sums partial results twice (after attention, after the MLP).
TP_RULES = (
    (r'attn/(q_proj|k_proj|v_proj|c_proj)$', ('model', None, None)),
    (r'mlp/c_fc/w$', (None, 'model')),
    (r'mlp/c_proj/w$', ('model', None)),
)
MASK_VALUE = -1e10  # The release's masked attention logit (w * b - 1e10 * (1 - b)).
# Attention without a cache: 'einsum' (any backend; materialises the [B, H, T, T] weights)
# or vision_core.flash_attention's kernels: 'pallas' (NVIDIA GPUs; memory linear in T),
# 'pallas_interpret' (the same kernels interpreted, any backend: for tests).
ATTENTIONS = ('einsum', 'pallas', 'pallas_interpret')


def get_size(name: str) -> dict:
  """The `ImageGPT` keyword arguments of a named size; a clear error for an unknown name."""
  if name not in SIZES:
    raise UserInputError(f'model size {name!r}: expected one of {", ".join(SIZES)}.')
  return dict(SIZES[name])


def rms_norm(x, g):
  """OpenAI's norm: `x * rsqrt(mean(x^2) + 1e-5) * g`, computed in float32. `[..., D]`."""
  x32 = x.astype(jnp.float32)
  s = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
  return (x32 * jax.lax.rsqrt(s + NORM_EPSILON) * g.astype(jnp.float32)).astype(x.dtype)


def gelu2(x):
  """The release's MLP activation, `x * sigmoid(1.702 x)`."""
  return x * jax.nn.sigmoid(1.702 * x)


class Norm(nn.Module):
  """`rms_norm` with its gain `g [D]` (initialised to one)."""

  @nn.compact
  def __call__(self, x):
    g = self.param('g', nn.initializers.ones, (x.shape[-1],))
    return rms_norm(x, g)


class Attention(nn.Module):
  """Multi-head attention with q/k/v/c projections stored as `[H, D/H, D]`.

  Without a cache: `[B, T, D]` -> `[B, T, D]`, causal unless `causal=False`, computed as
  `attention` says (`ATTENTIONS`). With a cache
  (a dict of `k`, `v` arrays `[B, H, n_ctx, D/H]`), `x` holds positions
  `[start, start + T)`; their keys and values are written into the cache, the queries attend
  to every cached position up to their own, and the updated cache is returned as well.
  """
  num_heads: int
  num_layers: int
  causal: bool = True
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'

  @nn.compact
  def __call__(self, x, *, cache: Optional[dict] = None, start=None):
    if self.attention not in ATTENTIONS:
      raise ValueError(f'attention={self.attention!r}: expected one of {", ".join(ATTENTIONS)}.')
    if self.attention == 'pallas':
      gpu_target.require_gpu("attention='pallas'", "'einsum'")
    d = x.shape[-1]
    h = self.num_heads
    shape = (h, d // h, d)
    init = nn.initializers.normal(stddev=1.0 / np.sqrt(d))
    wq = self.param('q_proj', init, shape)
    wk = self.param('k_proj', init, shape)
    wv = self.param('v_proj', init, shape)
    wc = self.param('c_proj', nn.initializers.normal(stddev=1.0 / np.sqrt(d * self.num_layers)),
                    shape)
    cast = lambda w: w.astype(self.dtype)
    if cache is None and self.attention != 'einsum':
      # One matmul into `[B, T, 3, H, D/H]` (k, v, q: the layout the kernels read, and the
      # gradient they write: one input-gradient matmul); q scaled before them.
      w_kvq = jnp.stack([wk, wv, wq * (1.0 / np.sqrt(d // self.num_heads))])
      kvq = jnp.einsum('bsf,thef->bsthe', x, cast(w_kvq))
      a = flash_attention.attention_kvq(kvq, x.shape[1],
                                        interpret=self.attention == 'pallas_interpret',
                                        causal=self.causal)
      return jnp.einsum('bshe,hef->bsf', a, cast(wc))
    q = jnp.einsum('bsf,hef->bhse', x, cast(wq))
    k = jnp.einsum('bsf,hef->bhse', x, cast(wk))
    v = jnp.einsum('bsf,hef->bhse', x, cast(wv))
    t = x.shape[1]
    if cache is None:
      dst = jnp.arange(t)
      src = jnp.arange(t)
    else:
      k = jax.lax.dynamic_update_slice(cache['k'], k.astype(cache['k'].dtype), (0, 0, start, 0))
      v = jax.lax.dynamic_update_slice(cache['v'], v.astype(cache['v'].dtype), (0, 0, start, 0))
      cache = dict(k=k, v=v)
      dst = start + jnp.arange(t)
      src = jnp.arange(k.shape[2])
    w = jnp.einsum('bhse,bhte->bhst', q, k.astype(self.dtype)).astype(jnp.float32)
    w = w * (1.0 / np.sqrt(d // h))
    if self.causal or cache is not None:
      w = jnp.where(dst[:, None] >= src[None, :], w, MASK_VALUE)
    w = jax.nn.softmax(w, axis=-1).astype(self.dtype)
    a = jnp.einsum('bhst,bhte->bhse', w, v.astype(self.dtype))
    out = jnp.einsum('bhse,hef->bsf', a, cast(wc))
    return out if cache is None else (out, cache)


class Mlp(nn.Module):
  """`c_fc/w [D, 4D]` -> gelu2 -> `c_proj/w [4D, D]`, no biases. `[B, T, D]` -> same."""
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    d = x.shape[-1]
    fc = _Conv1d(4 * d, dtype=self.dtype, name='c_fc')(x)
    return _Conv1d(d, dtype=self.dtype, name='c_proj')(gelu2(fc))


class _Conv1d(nn.Module):
  """The release's `conv1d`: a bias-free dense layer with weight `w [in, out]`, `[..., in]` ->
  `[..., out]` (vision_core.matmul: its weight gradient copies the narrower operand)."""
  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    w = self.param('w', nn.initializers.normal(stddev=0.02), (x.shape[-1], self.features))
    return matmul(x, w.astype(self.dtype))


class Block(nn.Module):
  """Pre-norm block: `x += attn(ln_1(x))`, `x += mlp(ln_2(x))`. Also returns `ln_1(x)`."""
  num_heads: int
  num_layers: int
  causal: bool = True
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'

  @nn.compact
  def __call__(self, x, *, cache=None, start=None):
    y = Norm(name='ln_1')(x)
    attn = Attention(self.num_heads, self.num_layers, self.causal, self.dtype, self.attention,
                     name='attn')
    if cache is None:
      a = attn(y)
    else:
      a, cache = attn(y, cache=cache, start=start)
    x = x + a
    x = x + Mlp(self.dtype, name='mlp')(Norm(name='ln_2')(x))
    return x, y, cache


class ImageGPT(nn.Module):
  """Image GPT. Tokens `[B, T]` -> dict of `logits [B, T, vocab]` (and more, see `__call__`).

  Attributes:
    width, num_heads, num_layers: D, H and the number of blocks (see `SIZES`).
    vocab_size: palette size (512 in the release).
    n_ctx: the longest token sequence, and the rows of `wpe` (1024 = 32 x 32 pixels).
    num_classes: rows of the classification head `clf/wclf`; 0 leaves it out.
    bert: the release's BERT objective (no `sos`, no causal mask, masked inputs zeroed).
    dtype: compute dtype (bfloat16 for mixed precision); parameters and norms stay float32.
    attention: how the uncached forward computes attention (`ATTENTIONS`); sampling with
      the cache always uses einsums.
  """
  width: int
  num_heads: int
  num_layers: int
  vocab_size: int = 512
  n_ctx: int = 1024
  num_classes: int = 0
  bert: bool = False
  dtype: Dtype = jnp.float32
  attention: str = 'einsum'

  def setup(self):
    if self.width % self.num_heads:
      raise UserInputError(f'width={self.width} is not divisible by num_heads={self.num_heads}.')
    d = self.width
    normal = nn.initializers.normal
    self.wte = self.param('wte', normal(stddev=0.02), (self.vocab_size, d))
    self.wtet = self.param('wtet', nn.initializers.zeros, (self.vocab_size, d))
    self.wpe = self.param('wpe', normal(stddev=0.01), (self.n_ctx, d))
    if not self.bert:
      self.sos = self.param('sos', normal(stddev=0.02), (d,))
    self.blocks = [Block(self.num_heads, self.num_layers, not self.bert, self.dtype,
                         self.attention, name=f'h{i}') for i in range(self.num_layers)]
    self.ln_f = Norm()
    if self.num_classes:
      self.clf = _Classifier(self.num_classes, name='clf')

  def check_tokens(self, tokens, *, name: str = 'tokens') -> None:
    """Raises `UserInputError` unless `tokens` is `[B, T]` with T <= n_ctx."""
    shape = np.shape(tokens)
    if len(shape) != 2:
      raise UserInputError(f'{name}: expected [B, T] palette tokens, got shape {shape}.')
    if shape[1] > self.n_ctx:
      raise UserInputError(
          f'{name}: {shape[1]} tokens per image but the model\'s n_ctx is {self.n_ctx}; '
          f'use images of at most {self.n_ctx} pixels or a model with a larger n_ctx.')

  def _embed_inputs(self, prev, positions):
    """Input embeddings at `positions [T]`, given the previous tokens `prev [B, T]`."""
    h = jnp.take(self.wte, jnp.clip(prev, 0, self.vocab_size - 1), axis=0)
    h = jnp.where((positions == 0)[None, :, None], self.sos[None, None, :], h)
    return (h + jnp.take(self.wpe, positions, axis=0)[None]).astype(self.dtype)

  def __call__(self, tokens, *, bert_keep=None, return_features: bool = False):
    """Full (teacher-forced) forward pass.

    Args:
      tokens: `[B, T]` ints, T <= n_ctx.
      bert_keep: BERT only: `[B, T]`, 1 where the input token is kept and 0 where masked.
      return_features: also return `features [L + 1, B, D]`: the sequence mean of each
        block's normalised input (`ln_1`), then of the `ln_f` output (the linear probe's).

    Returns:
      dict with `logits [B, T, vocab]`, `clf_logits [B, classes]` when `num_classes`, and
      `features` when asked.
    """
    self.check_tokens(tokens)
    t = tokens.shape[1]
    positions = jnp.arange(t)
    if self.bert:
      h = jnp.take(self.wte, tokens, axis=0)
      if bert_keep is not None:
        h = h * bert_keep[..., None].astype(h.dtype)
      h = (h + self.wpe[:t][None]).astype(self.dtype)
    else:
      prev = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
      h = self._embed_inputs(prev, positions)
    features = []
    for block in self.blocks:
      h, normed, _ = block(h)
      features.append(jnp.mean(normed.astype(jnp.float32), axis=1))
    h = self.ln_f(h)
    pooled = jnp.mean(h.astype(jnp.float32), axis=1)
    out = dict(logits=self._logits(h))
    if self.num_classes:
      out['clf_logits'] = self.clf(pooled)
    if return_features:
      out['features'] = jnp.stack(features + [pooled])
    return out

  def _logits(self, h):
    return jnp.einsum('btd,vd->btv', h, self.wtet.astype(self.dtype)).astype(jnp.float32)

  def decode(self, prev, cache: Cache, start):
    """Cached forward over positions `[start, start + T)`.

    Args:
      prev: `[B, T]` the tokens before those positions (x_{p-1}; ignored at p = 0, where the
        input is `sos`).
      cache: from `init_cache(model, B)`, holding positions `< start`.
      start: a scalar int (may be traced).

    Returns:
      `(logits [B, T, vocab], updated cache)`.
    """
    if self.bert:
      raise UserInputError('the BERT variant has no causal order; it cannot decode.')
    positions = start + jnp.arange(prev.shape[1])
    h = self._embed_inputs(prev, positions)
    new_cache = []
    for block, layer_cache in zip(self.blocks, cache):
      h, _, layer_cache = block(h, cache=layer_cache, start=start)
      new_cache.append(layer_cache)
    return self._logits(self.ln_f(h)), new_cache


class _Classifier(nn.Module):
  """`clf/wclf [classes, D]`, zero-initialised: pooled `[B, D]` -> logits `[B, classes]`."""
  num_classes: int

  @nn.compact
  def __call__(self, pooled):
    w = self.param('wclf', nn.initializers.zeros, (self.num_classes, pooled.shape[-1]))
    return pooled @ w.T.astype(jnp.float32)


def image_side(size: int | None, n_ctx: int, *, flag: str) -> int:
  """The image side for a model of `n_ctx` tokens: `size` (the command line's `flag`)
  checked against it, by default the model's own side (sqrt of n_ctx)."""
  side = math.isqrt(n_ctx)
  if size is None:
    if side * side != n_ctx:
      raise UserInputError(f'the model\'s n_ctx={n_ctx} is not a square image; pass {flag}.')
    return side
  if size < 1 or size * size > n_ctx:
    raise UserInputError(f'{flag}={size}: {size * size} pixels, but the model reads at most '
                         f'n_ctx={n_ctx} ({side}x{side} images).')
  if side * side == n_ctx and size != side:
    # Position t is pixel (t // side, t % side) to the model: other sizes scramble the rows
    # and give outputs (or features) of images it never saw, silently.
    raise UserInputError(f'{flag}={size}: the model was trained on {side}x{side} images '
                         f'(n_ctx={n_ctx}); pass {flag} {side}.')
  return size


def init_cache(model: ImageGPT, batch_size: int, length: Optional[int] = None) -> Cache:
  """Zero keys and values for `length` (default n_ctx) positions: one dict per layer of
  `k`, `v` arrays `[B, H, length, D/H]` in the model's compute dtype."""
  length = model.n_ctx if length is None else length
  shape = (batch_size, model.num_heads, length, model.width // model.num_heads)
  return [dict(k=jnp.zeros(shape, model.dtype), v=jnp.zeros(shape, model.dtype))
          for _ in range(model.num_layers)]


def init_params(model: ImageGPT, rng, seq_len: Optional[int] = None):
  """Initial parameters (OpenAI's initialisers) for `model`."""
  tokens = jnp.zeros((1, seq_len or 1), jnp.int32)
  return jax.jit(model.init)(rng, tokens)['params']  # One compile, not one per op.


def param_shapes(model: ImageGPT):
  """Parameter shapes without allocating them (`jax.eval_shape`)."""
  return jax.eval_shape(lambda: init_params(model, jax.random.PRNGKey(0)))


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
