"""The colour palette: 512 RGB centres found by k-means, mapping pixels to 9-bit tokens.

Stored like OpenAI's `kmeans_centers.npy`: a float32 `[512, 3]` array of RGB centres in
[-1, 1] (pixel / 127.5 - 1). A pixel's token is its nearest centre by squared distance.
"""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from vision_core import io
from vision_core.errors import UserInputError

NUM_CLUSTERS = 512


def preprocess_spec(image_size: int) -> str:
  """`vision_core.data` ops giving a dataset's images as the palette's input: grey ones
  (MNIST) repeated to RGB, as the centres are RGB colours, then resized to `image_size`."""
  return f'to_rgb|resize({image_size})'


def to_unit_range(pixels) -> jnp.ndarray:
  """uint8 `[..., 3]` -> float32 in [-1, 1], the palette's space (OpenAI: x / 127.5 - 1)."""
  return jnp.asarray(pixels, jnp.float32) / 127.5 - 1.0


def unit_pixels(pixels, *, name: str = 'images') -> jnp.ndarray:
  """Pixels in the palette's space: uint8 (or any integers in [0, 255]) are scaled by
  `to_unit_range`; floats must already be in [-1, 1]. Anything else is a `UserInputError`
  (float pixels in [0, 255] or ints above 255 would otherwise all map to the brightest
  centres, silently)."""
  pixels = np.asarray(pixels)
  if pixels.dtype == np.uint8:
    return to_unit_range(pixels)
  lo, hi = (pixels.min(), pixels.max()) if pixels.size else (0, 0)
  if np.issubdtype(pixels.dtype, np.integer):
    if lo < 0 or hi > 255:
      raise UserInputError(f'{name}: integer pixels must be in [0, 255], found [{lo}, {hi}].')
    return to_unit_range(pixels)
  if not np.issubdtype(pixels.dtype, np.floating):
    raise UserInputError(f'{name}: expected uint8 pixels or floats in [-1, 1], found dtype '
                         f'{pixels.dtype}.')
  if not (np.isfinite(lo) and np.isfinite(hi) and lo >= -1.0 - 1e-6 and hi <= 1.0 + 1e-6):
    raise UserInputError(f'{name}: float pixels must be in [-1, 1] (x / 127.5 - 1), found '
                         f'[{lo:.4g}, {hi:.4g}]; pass uint8 for [0, 255].')
  return jnp.asarray(pixels, jnp.float32)


def check_palette(centers, *, source: str = 'palette', num_clusters: int | None = None):
  """Raises `UserInputError` unless `centers` is a finite float `[K, 3]` in [-1, 1]."""
  shape = np.shape(centers)
  if len(shape) != 2 or shape[1] != 3 or (num_clusters and shape[0] != num_clusters):
    k = num_clusters or 'K'
    raise UserInputError(f'{source}: expected palette centres of shape [{k}, 3] (RGB in '
                         f'[-1, 1], like OpenAI\'s kmeans_centers.npy), found shape {shape}.')
  centers = np.asarray(centers)
  if not np.issubdtype(centers.dtype, np.floating):
    raise UserInputError(f'{source}: expected float centres in [-1, 1], found dtype '
                         f'{centers.dtype}.')
  if not np.all(np.isfinite(centers)) or np.abs(centers).max() > 1.0 + 1e-6:
    raise UserInputError(f'{source}: centres must be finite and in [-1, 1]; found values '
                         f'in [{np.nanmin(centers):.3g}, {np.nanmax(centers):.3g}].')


def _hf_clusters(path: str) -> np.ndarray:
  """The `clusters` of HF's ImageGPTImageProcessor (`preprocessor_config.json`): OpenAI's
  centres as a list of 512 [r, g, b] lists, the only copy of the palette an HF user has."""
  try:
    clusters = json.loads(io.read_bytes(path)).get('clusters')
  except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
    raise UserInputError(f'{path}: not an ImageGPT preprocessor config ({e}).') from None
  if clusters is None:
    raise UserInputError(f'{path}: no "clusters" entry (HF ImageGPTImageProcessor\'s palette).')
  try:
    return np.asarray(clusters, np.float32)
  except (TypeError, ValueError) as e:
    raise UserInputError(f'{path}: "clusters" is not a [K, 3] list of numbers ({e}).') from None


def load_palette(path: str | os.PathLike, *, num_clusters: int | None = None) -> np.ndarray:
  """Reads a palette as float32 `[K, 3]`: a `.npy` (OpenAI's `kmeans_centers.npy` or ours) or
  HF's `preprocessor_config.json` (its `clusters`)."""
  path = os.fspath(path)
  if not io.exists(path):
    raise FileNotFoundError(f'{path}: no such palette file.')
  if path.endswith('.json'):
    centers = _hf_clusters(path)
    check_palette(centers, source=path, num_clusters=num_clusters)
    return centers
  try:
    centers = np.load(io.readable(path), allow_pickle=False)
  except ValueError as e:
    raise UserInputError(f'{path}: not a plain numeric .npy array ({e}).') from None
  if not isinstance(centers, np.ndarray):
    raise UserInputError(f'{path}: expected one .npy array, found an archive of several.')
  check_palette(centers, source=path, num_clusters=num_clusters)
  return centers.astype(np.float32)


def save_palette(path: str | os.PathLike, centers, *, overwrite: bool = False) -> None:
  """Writes `[K, 3]` float32 centres as `.npy`, atomically."""
  check_palette(centers)
  with io.atomic_write(path, 'wb', overwrite=overwrite) as f:
    np.save(f, np.asarray(centers, np.float32), allow_pickle=False)


def squared_distances(x, centers):
  """`[N, 3]`, `[K, 3]` -> `[N, K]`: |x|^2 - 2 x.c + |c|^2 (as OpenAI's utils compute it)."""
  return (jnp.sum(x * x, -1)[:, None] - 2.0 * x @ centers.T
          + jnp.sum(centers * centers, -1)[None, :])


@jax.jit
def _quantize(x, centers):
  flat = x.reshape(-1, 3)
  return jnp.argmin(squared_distances(flat, centers), axis=-1).astype(jnp.int32).reshape(
      x.shape[:-1])


def tokens_from_images(images, centers):
  """Traceable (inside jit): uint8 `[B, H, W, 3]` -> tokens `[B, H * W]` int32."""
  x = to_unit_range(images)
  return _quantize(x, centers).reshape(images.shape[0], -1)


def quantize(images, centers) -> jnp.ndarray:
  """Images `[..., H, W, 3]` (uint8, or float in [-1, 1]) -> tokens `[..., H * W]` int32."""
  images = np.asarray(images)
  if images.ndim < 3 or images.shape[-1] != 3:
    raise UserInputError(f'images: expected [..., H, W, 3] RGB, found shape {images.shape}.')
  check_palette(centers)
  x = unit_pixels(images)
  tokens = _quantize(x, jnp.asarray(centers, jnp.float32))
  return tokens.reshape(*tokens.shape[:-2], -1)


def dequantize(tokens, centers, image_shape: tuple[int, int] | None = None) -> np.ndarray:
  """Tokens `[..., H * W]` -> uint8 images `[..., H, W, 3]` (square unless `image_shape`)."""
  tokens = np.asarray(tokens)
  centers = np.asarray(centers, np.float32)
  if not np.issubdtype(tokens.dtype, np.integer):
    raise UserInputError(f'tokens: expected integer palette indices, found dtype '
                         f'{tokens.dtype}.')
  if tokens.size and (tokens.min() < 0 or tokens.max() >= len(centers)):
    raise UserInputError(f'tokens: values must be in [0, {len(centers)}), found '
                         f'[{tokens.min()}, {tokens.max()}].')
  if image_shape is None:
    side = int(round(np.sqrt(tokens.shape[-1])))
    if side * side != tokens.shape[-1]:
      raise UserInputError(f'tokens: {tokens.shape[-1]} per image is not a square image; '
                           'pass image_shape=(H, W).')
    image_shape = (side, side)
  pixels = np.rint(127.5 * (centers[tokens] + 1.0)).clip(0, 255).astype(np.uint8)
  return pixels.reshape(*tokens.shape[:-1], *image_shape, 3)


def _kmeans_plus_plus(key, x, k):
  """k-means++ seeding on the sample `x [N, 3]`: each new centre drawn by D^2 weighting."""
  first = jax.random.randint(key, (), 0, x.shape[0])
  centers = jnp.zeros((k, 3), x.dtype).at[0].set(x[first])
  d2 = jnp.sum((x - x[first]) ** 2, -1)

  def add(i, carry):
    centers, d2 = carry
    pick = jax.random.categorical(jax.random.fold_in(key, i), jnp.log(d2 + 1e-12))
    centers = centers.at[i].set(x[pick])
    return centers, jnp.minimum(d2, jnp.sum((x - x[pick]) ** 2, -1))

  return jax.lax.fori_loop(1, k, add, (centers, d2))[0]


@functools.partial(jax.jit, static_argnames=('k', 'batch_size', 'steps', 'seed_size'))
def _fit(key, x, *, k, batch_size, steps, seed_size):
  seed_key, key = jax.random.split(key)
  sample = x[jax.random.choice(seed_key, x.shape[0], (min(seed_size, x.shape[0]),),
                               replace=False)]
  centers = _kmeans_plus_plus(seed_key, sample, k)

  def step(carry, step_key):
    centers, counts = carry
    batch = x[jax.random.randint(step_key, (batch_size,), 0, x.shape[0])]
    nearest = jnp.argmin(squared_distances(batch, centers), axis=-1)
    n = jax.ops.segment_sum(jnp.ones(batch_size), nearest, num_segments=k)
    sums = jax.ops.segment_sum(batch, nearest, num_segments=k)
    counts = counts + n
    # Sculley's per-centre learning rate 1 / count, applied to the batch mean at once.
    rate = jnp.where(counts > 0, n / jnp.maximum(counts, 1.0), 0.0)[:, None]
    mean = sums / jnp.maximum(n, 1.0)[:, None]
    return (centers + rate * (mean - centers), counts), None

  (centers, _), _ = jax.lax.scan(step, (centers, jnp.zeros(k)), jax.random.split(key, steps))
  return centers


def fit_palette(pixels, *, num_clusters: int = NUM_CLUSTERS, steps: int = 300,
                batch_size: int = 8192, seed: int = 0) -> np.ndarray:
  """Mini-batch k-means (k-means++ seeding, Sculley 2010) of RGB pixels, in JAX.

  Args:
    pixels: `[..., 3]` training pixels, uint8 (or ints in [0, 255]) or float in [-1, 1]
      (flattened over `...`).
    num_clusters: K (512 for Image GPT's 9-bit tokens).
    steps, batch_size: mini-batches of pixels drawn with replacement.

  Returns:
    float32 `[K, 3]` centres in [-1, 1].
  """
  pixels = np.asarray(pixels)
  if pixels.shape[-1] != 3:
    raise UserInputError(f'pixels: expected [..., 3] RGB, found shape {pixels.shape}.')
  x = unit_pixels(pixels, name='pixels').reshape(-1, 3)
  if x.shape[0] < num_clusters:
    raise UserInputError(f'pixels: {x.shape[0]} pixels cannot fit {num_clusters} clusters.')
  centers = _fit(jax.random.PRNGKey(seed), x, k=num_clusters, batch_size=batch_size,
                 steps=steps, seed_size=max(20 * num_clusters, 10_000))
  return np.clip(np.asarray(centers, np.float32), -1.0, 1.0)
