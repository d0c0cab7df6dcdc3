"""Sampling: unconditional images and completions, KV-cached and jit-compiled end to end.

    sample = make_sampler(model, num_tokens=1024, prefix_len=512, top_k=40)
    tokens = sample(params, key, prefix)           # [B, 1024], prefix [B, 512] kept as is

The whole loop over tokens is compiled into one `jax.jit`: no Python per token. With the KV
cache it is a few `lax.scan`s, each over a span of positions that attends only to the cache
up to the span's end (`cache_spans`: sampling reads the cache at every token, so reading
only its filled part made it 1.35x faster on a CPU, docs/benchmarks.md).
With `cached=False` every token is a full forward pass over the sequence (what OpenAI's
release does). Each row has its own key (`fold_in(key, row)`, or one given per row) and
draws token t with `fold_in(row_key, t)`: both give the same tokens, and a row's tokens do
not depend on the other rows of the batch, so `complete` can work in chunks.
"""

from __future__ import annotations

import os
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from igpt_jax import model as igpt_model
from vision_core import io, mesh as mesh_lib
from vision_core.errors import UserInputError


def filter_logits(logits, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """Temperature, then top-k, then nucleus (top-p) filtering. `[B, V]` -> `[B, V]`.

  Filtered-out tokens get -inf. top_k=0 and top_p=1 disable those filters.
  """
  logits = logits.astype(jnp.float32) / max(temperature, 1e-6)
  if top_k:
    kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
    logits = jnp.where(logits < kth, -jnp.inf, logits)
  if top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[:, ::-1]
    probs = jax.nn.softmax(sorted_logits, axis=-1)
    before = jnp.cumsum(probs, axis=-1) - probs  # Probability mass strictly above each.
    kept = jnp.where(before < top_p, sorted_logits, jnp.inf)
    threshold = jnp.min(kept, axis=-1, keepdims=True)
    logits = jnp.where(logits < threshold, -jnp.inf, logits)
  return logits


def check_filters(*, temperature: float, top_k: int, top_p: float, vocab_size: int) -> None:
  """Raises `UserInputError` unless the filters of `filter_logits` leave a token to draw."""
  if not temperature > 0:  # Also rejects NaN.
    raise UserInputError(f'temperature={temperature}: expected > 0 (small values approach '
                         'greedy decoding).')
  if not 0 <= top_k <= vocab_size:
    raise UserInputError(f'top_k={top_k}: expected 0 (off) to {vocab_size} (the vocabulary).')
  if not 0 < top_p <= 1:
    raise UserInputError(f'top_p={top_p}: expected 0 < top_p <= 1 (1: off); top_p=0 would '
                         'leave no token to sample.')


def check_sampling(model: igpt_model.ImageGPT, *, num_tokens: int, prefix_len: int) -> None:
  if num_tokens > model.n_ctx:
    raise UserInputError(f'num_tokens={num_tokens}: the model\'s n_ctx is {model.n_ctx}, it '
                         f'cannot generate images of more than {model.n_ctx} pixels.')
  if not 0 <= prefix_len < num_tokens:
    raise UserInputError(f'prefix_len={prefix_len}: expected 0 <= prefix_len < num_tokens='
                         f'{num_tokens} (at least one token left to sample).')
  if model.bert:
    raise UserInputError('the BERT variant has no causal order; it cannot sample.')


def has_lm_head(params) -> bool:
  """Whether `params`' language-model head `wtet` holds weights: it is all zero where
  `checkpoint.load(..., need_lm_head=False)` read weights without one (an HF ImageGPTModel
  or ImageGPTForImageClassification save), and in a model never trained."""
  return bool(jnp.any(jnp.asarray(params['wtet']) != 0))  # one reduction, not per token


def warn_if_no_lm_head(params) -> None:
  """Warns (`UserWarning`) for an all-zero `wtet`: every logit is then 0, so the samples
  are uniform noise over the palette. Weights loaded with `checkpoint.load(...,
  need_lm_head=False)` from a save without the head (HF ImageGPTModel) are one cause, a
  model never trained (`init_params`: a demo of the sampler) the other, so this is not an
  error."""
  if not has_lm_head(params):
    warnings.warn(
        'params: the language-model head wtet is all zero (weights loaded with '
        'checkpoint.load(..., need_lm_head=False), e.g. an HF ImageGPTModel save, or an '
        'untrained model): the samples are uniform noise over the palette; for images load '
        'weights with the head (ImageGPTForCausalImageModeling, our params.npz, OpenAI\'s '
        'checkpoint).', UserWarning, stacklevel=3)


# The cached loop's scans (`cache_spans`): the attention reads on average (k + 1) / 2k of
# the cache it read in one scan, for k compiled scan bodies.
CACHE_SEGMENTS = 8


def cache_spans(start: int, stop: int, segments: int) -> list[tuple[int, int]]:
  """`[lo, hi)` spans covering positions `[start, stop)`: `segments` equal parts of
  `[0, stop)` (rounded up to multiples of 8), those before `start` left out."""
  if segments < 1:
    raise UserInputError(f'cache_segments={segments}: expected >= 1.')
  size = -(-stop // segments)
  size = -(-size // 8) * 8
  bounds = sorted({min(stop, i * size) for i in range(1, segments + 1)} | {stop})
  spans, lo = [], start
  for hi in bounds:
    if hi > lo:
      spans.append((lo, hi))
      lo = hi
  return spans


def row_keys(key, rows: int):
  """`[rows]` raw PRNG keys: `key` itself when it already holds one per row, else
  `fold_in(key, r)` for row r. Typed keys (`jax.random.key`) are taken as their raw data."""
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  key = jnp.asarray(key)
  if key.ndim == 2:  # [rows, 2]: one raw key per row.
    if key.shape[0] != rows:
      raise UserInputError(f'key: {key.shape[0]} row keys for {rows} rows.')
    return key
  return jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(rows))


def make_sampler(model: igpt_model.ImageGPT, *, num_tokens: int, prefix_len: int = 0,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                 cached: bool = True, cache_segments: int = CACHE_SEGMENTS) -> Callable:
  """A jit-compiled `sample(params, key, prefix [B, prefix_len]) -> tokens [B, num_tokens]`.

  The first `prefix_len` tokens of the result are `prefix`, unchanged. `key` is one PRNG
  key (row r then uses `fold_in(key, r)`) or `[B]` keys, one per row; token t >= prefix_len
  of a row is drawn from the filtered logits with `fold_in(row_key, t)`.
  `cache_segments`: the cached loop runs as that many scans, each attending only to the
  cache up to its last position (`cache_spans`).
  """
  check_sampling(model, num_tokens=num_tokens, prefix_len=prefix_len)
  check_filters(temperature=temperature, top_k=top_k, top_p=top_p,
                vocab_size=model.vocab_size)
  draw = jax.vmap(lambda key, t, logits: jax.random.categorical(
      jax.random.fold_in(key, t), logits), in_axes=(0, None, 0))
  pick = lambda keys, t, logits: draw(keys, t, filter_logits(
      logits, temperature=temperature, top_k=top_k, top_p=top_p)).astype(jnp.int32)
  steps = jnp.arange(prefix_len, num_tokens)

  def sample_cached(params, key, prefix):
    b = prefix.shape[0]
    cache = igpt_model.init_cache(model, b, num_tokens)
    tokens = jnp.zeros((b, num_tokens), jnp.int32).at[:, :prefix_len].set(prefix)
    decode = lambda prev, cache, start: model.apply(
        {'params': params}, prev, cache, start, method=model.decode)
    prev = jnp.zeros((b,), jnp.int32)
    if prefix_len:  # Prefill positions [0, P) (inputs sos, x_0 .. x_{P-2}) in one pass.
      _, cache = decode(jnp.pad(prefix[:, :-1], ((0, 0), (1, 0))), cache, 0)
      prev = prefix[:, -1]

    def step(carry, t):
      cache, prev, tokens = carry
      logits, cache = decode(prev[:, None], cache, t)  # Position t, input x_{t-1}.
      new = pick(key, t, logits[:, 0])
      return (cache, new, tokens.at[:, t].set(new)), None

    for lo, hi in cache_spans(prefix_len, num_tokens, cache_segments):
      # Positions [lo, hi) attend to the cache's first `hi` entries only: reading all of it
      # for every token (134 MB per token for 8 images at width 256, 8 layers) was what the
      # loop waited for on a CPU.
      part = [{k: v[:, :, :hi] for k, v in layer.items()} for layer in cache]
      part, prev, tokens = jax.lax.scan(step, (part, prev, tokens), jnp.arange(lo, hi))[0]
      cache = [{k: v.at[:, :, :hi].set(part_layer[k]) for k, v in layer.items()}
               for layer, part_layer in zip(cache, part)]
    return tokens

  def sample_uncached(params, key, prefix):
    b = prefix.shape[0]
    tokens = jnp.zeros((b, num_tokens), jnp.int32).at[:, :prefix_len].set(prefix)

    def step(tokens, t):
      logits = model.apply({'params': params}, tokens)['logits']
      row = jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)
      return tokens.at[:, t].set(pick(key, t, row)), None

    return jax.lax.scan(step, tokens, steps)[0]

  fn = jax.jit(sample_cached if cached else sample_uncached)

  def sample(params, key, prefix=None, *, batch_size: int | None = None,
             check_head: bool = True, mesh: jax.sharding.Mesh | None = None):
    # mesh: the rows are split over its 'data' axis (their count a multiple of its size),
    # the parameters replicated; None: where the inputs are (one device).
    if check_head:  # False: the caller checked these params (sample_in_batches, once)
      warn_if_no_lm_head(params)
    if prefix is None:
      if prefix_len:
        raise UserInputError(f'this sampler keeps {prefix_len} prefix tokens; pass them.')
      prefix = jnp.zeros((batch_size or 1, 0), jnp.int32)
    raw = np.asarray(prefix)
    if raw.size and not np.issubdtype(raw.dtype, np.integer):
      raise UserInputError(f'prefix: expected integer tokens, found {raw.dtype}.')
    prefix = jnp.asarray(raw, jnp.int32)
    if prefix.ndim != 2 or prefix.shape[1] != prefix_len:
      raise UserInputError(f'prefix: expected [B, {prefix_len}] tokens, found shape '
                           f'{prefix.shape}.')
    if raw.size and not 0 <= raw.min() <= raw.max() < model.vocab_size:
      # The model would clip them, and they would come back in the output unchanged.
      raise UserInputError(f'prefix: tokens must be in [0, {model.vocab_size}), found '
                           f'[{raw.min()}, {raw.max()}].')
    keys = row_keys(key, prefix.shape[0])
    if mesh is not None:
      mesh_lib.check_batch_size(prefix.shape[0], mesh, field='sample: rows')
      rows = mesh_lib.batch_sharding(mesh, 2)
      keys, prefix = jax.device_put(keys, rows), jax.device_put(prefix, rows)
      params = jax.device_put(params, mesh_lib.replicated(mesh))
    return fn(params, keys, prefix)

  return sample


def complete(model, params, key, tokens, *, image_shape: tuple[int, int], keep_rows: int,
             num_completions: int = 1, batch_size: int = 64,
             mesh: jax.sharding.Mesh | None = None, **sampler_kwargs):
  """Keeps the top `keep_rows` rows of each image and samples the rest, N times each.

  Completion j of image i uses the key `fold_in(fold_in(key, i), j)`, so it is the same
  whatever `batch_size` (rows sampled at once, to bound the memory), the devices (`mesh`,
  as `sample_in_batches`) and the other images.

  Args:
    tokens: `[B, H * W]` palette tokens of the originals.
    image_shape: `(H, W)`.
    keep_rows: rows kept, in [1, H).

  Returns:
    `[B, num_completions, H * W]` tokens; `[:, :, :keep_rows * W]` equals the input's.

  Params whose language-model head is all zero give a warning (`warn_if_no_lm_head`).
  """
  h, w = image_shape
  tokens = jnp.asarray(tokens, jnp.int32)
  if tokens.ndim != 2 or tokens.shape[1] != h * w:
    raise UserInputError(f'tokens: expected [B, {h * w}] for {h}x{w} images, found shape '
                         f'{tokens.shape}.')
  if num_completions < 1:
    raise UserInputError(f'num_completions={num_completions}: expected at least 1.')
  if not 1 <= keep_rows < h:
    raise UserInputError(f'keep_rows={keep_rows}: expected 1 <= keep_rows < {h} (the image '
                         f'has {h} rows; keep some, sample the rest).')
  sample = make_sampler(model, num_tokens=h * w, prefix_len=keep_rows * w, **sampler_kwargs)
  prefix = jnp.repeat(tokens[:, :keep_rows * w], num_completions, axis=0)
  per_image = row_keys(key, tokens.shape[0])
  keys = jax.vmap(lambda k: row_keys(k, num_completions))(per_image).reshape(
      -1, *per_image.shape[1:])
  out = sample_in_batches(sample, params, keys, prefix, batch_size=batch_size, mesh=mesh)
  return out.reshape(tokens.shape[0], num_completions, h * w)


def sample_in_batches(sample, params, keys, prefix, *, batch_size: int,
                      mesh: jax.sharding.Mesh | None = None):
  """`sample` (a `make_sampler` function) over rows `batch_size` at a time, one key per row
  (`[rows, 2]`): the same tokens as one call, in bounded memory. Each batch is split over
  `mesh`'s 'data' axis (default: every device of this process), the parameters replicated;
  a batch is `batch_size` rows rounded up to a multiple of the devices. The last batch is
  padded to the others' shape, so the sampler compiles once. Params without a
  language-model head give one warning (`warn_if_no_lm_head`) for all the batches."""
  if batch_size < 1:
    raise UserInputError(f'batch_size={batch_size}: expected at least 1 row per batch.')
  warn_if_no_lm_head(params)
  mesh = mesh_lib.local_data_mesh() if mesh is None else mesh
  params = jax.device_put(params, mesh_lib.replicated(mesh))  # once, not per batch
  prefix = jnp.asarray(prefix, jnp.int32)
  rows = prefix.shape[0]
  size = mesh_lib.rows_per_batch(batch_size, rows, mesh)
  pad = -rows % size
  keys = jnp.concatenate([keys, jnp.repeat(keys[-1:], pad, axis=0)])
  prefix = jnp.concatenate([prefix, jnp.repeat(prefix[-1:], pad, axis=0)])
  # Each batch comes back to the host as it is done: the devices hold one batch at a time.
  return jnp.asarray(np.concatenate([
      np.asarray(sample(params, keys[i:i + size], prefix[i:i + size], check_head=False,
                        mesh=mesh))
      for i in range(0, rows + pad, size)])[:rows])


def completion_grid(originals, completions, *, keep_rows: int, pad: int = 2) -> np.ndarray:
  """One row per image: original | kept rows (rest grey) | completions. uint8 `[H', W', 3]`.

  Args:
    originals: uint8 `[B, H, W, 3]` (palette-dequantised originals).
    completions: uint8 `[B, N, H, W, 3]`.
  """
  originals = np.asarray(originals, np.uint8)
  completions = np.asarray(completions, np.uint8)
  b, n, h, w, _ = completions.shape
  kept = originals.copy()
  kept[:, keep_rows:] = 128
  panels = np.concatenate([originals[:, None], kept[:, None], completions], axis=1)
  grid = np.full((b * (h + pad) + pad, (n + 2) * (w + pad) + pad, 3), 255, np.uint8)
  for i in range(b):
    for j in range(n + 2):
      y, x = pad + i * (h + pad), pad + j * (w + pad)
      grid[y:y + h, x:x + w] = panels[i, j]
  return grid


def save_png(path: str | os.PathLike, image, *, overwrite: bool = False) -> None:
  """Writes a uint8 `[H, W, 3]` image as PNG, atomically."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with io.atomic_write(path, 'wb', overwrite=overwrite) as f:
    Image.fromarray(np.asarray(image, np.uint8)).save(f, format='PNG')
