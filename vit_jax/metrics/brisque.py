"""BRISQUE no-reference image quality, batched and jit-compiled, matching OpenCV's numbers.

BRISQUE (Mittal, Moorthy and Bovik, IEEE TIP 2012) describes an image by 36 natural-scene
statistics and maps them to a quality score (lower is better; about 0-100) with an RBF
support-vector regression trained on the LIVE database. This module follows OpenCV's
`cv::quality::QualityBRISQUE` (opencv_contrib) step by step, so that a user moving from
`cv2.quality.QualityBRISQUE_compute` gets the same score (within 1e-3, see the tests):

  1. Grey: RGB uint8 -> uint8 luma with OpenCV's 15-bit fixed point
     (9798 R + 19235 G + 3735 B + 2^14) >> 15; RGBA drops alpha; one channel is used as is.
     Float input is taken as [0, 255] and converted with 0.299/0.587/0.114 (OpenCV's float
     path); [0, 1] floats, which OpenCV scores as nearly black, are refused. Then float32
     in [0, 1].
  2. Two scales: the image, and a bicubic half-size copy (OpenCV INTER_CUBIC, a = -0.75,
     half-pixel centres, replicated border, size floor(W/2) x floor(H/2)).
  3. MSCN coefficients per scale: mu and sigma from a 7x7 Gaussian (sigma 7/6, replicated
     border); (x - mu) / (sqrt(|E[x^2] - mu^2|) + 1/255).
  4. An asymmetric generalised Gaussian (AGGD) fit to the MSCN map (2 features: shape and
     mean variance) and to its four neighbour products, H, V, D1, D2 (4 features each:
     shape, mean, left and right variance), 18 per scale. The shape is looked up on OpenCV's
     grid 0.2, 0.201, ... < 10 by moment matching.
  5. Features scaled to [-1, 1] with the model's range table, then the SVR; the score is
     clamped to [0, 100] as OpenCV does.

Pixel arithmetic is float32 like OpenCV's; the per-image sums and the SVR use float64 (inside
`jax.enable_x64`) because the grid lookup and the sum over ~800 support vectors with weights
up to 1024 need it to reproduce OpenCV to 1e-3.

Execution: one compiled program per image shape, run on one image at a time, so that its dozen
full-size maps stay in cache (a whole batch at once streamed them through memory and ran at
half the speed); XLA already spreads each image's large loops over the CPU cores. A score is
therefore the same bits whatever batch, order or thread count it comes in. With a mesh, each
device maps over its own shard of the batch the same way.
"""

from __future__ import annotations

import concurrent.futures
import functools
import math
import os

import jax
import jax.numpy as jnp
import numpy as np

from vision_core import mesh as mesh_lib
from vision_core.errors import UserInputError
from vision_core.images import check_batch
from vit_jax.metrics import checks
from vit_jax.metrics.brisque_filters import gaussian_7x7, half_size, to_grey
from vit_jax.metrics.brisque_model import BrisqueModel, load_model
from vit_jax.metrics.opencv_float import mul as _mul, opencv_exp, rounded

_MIN_SIDE = 8  # The half scale must still be larger than the 7x7 window.


def _gamma_grid() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """OpenCV's AGGD shape grid, the midpoints between its moment ratios, and mean factors.

  The grid is built by repeated addition of 0.001 from 0.2, exactly as OpenCV's loop does,
  so the values (and hence the features) are bit-identical. OpenCV walks the grid while
  |r(gamma) - rhat| decreases; r is increasing, so that stops at the first grid point whose
  successor is farther, i.e. index = number of midpoints <= rhat.
  """
  grid = []
  g = 0.2
  while g < 10:
    grid.append(g)
    g += 0.001
  grid = np.asarray(grid, np.float64)
  lg = np.vectorize(math.lgamma)
  ratio = np.exp(2 * lg(2 / grid) - lg(1 / grid) - lg(3 / grid))
  midpoints = (ratio[:-1] + ratio[1:]) / 2
  # AGGD mean = (r - l) * Gamma(2/g) / Gamma(1/g) * sqrt(Gamma(1/g) / Gamma(3/g)).
  mean_factor = np.exp(lg(2 / grid) - 0.5 * lg(1 / grid) - 0.5 * lg(3 / grid))
  return grid, midpoints, mean_factor


_GRID, _MIDPOINTS, _MEAN_FACTOR = _gamma_grid()


def _mscn(x: jax.Array, zero: jax.Array) -> jax.Array:
  """MSCN coefficients of `[B, H, W]`, with OpenCV's float32 rounding at every step.

  Where rounding makes E[x^2] - mu^2 negative, OpenCV's sqrt gives NaN and its later
  max/min/patchNaNs turn that pixel into 0 (it still counts in the image size); so here.
  """
  mu, mean_sq = gaussian_7x7(x, zero), gaussian_7x7(x * x, zero)
  var = mean_sq - _mul(mu, mu, zero)
  sigma = jnp.sqrt(jnp.maximum(var, 0)) + np.float32(1 / 255)
  return jnp.where(var < 0, np.float32(0), (x - mu) / sigma)


def _shifted(z: jax.Array, dy: int, dx: int) -> jax.Array:
  """`out[i, j] = z[i + dy, j + dx]`, zero outside the image."""
  _, h, w = z.shape
  p = jnp.pad(z, ((0, 0), (1, 1), (1, 1)))
  return p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]


def _moment_sums(m: jax.Array, zero: jax.Array) -> tuple[jax.Array, ...]:
  """One image's AGGD moment sums of a `[1, H, W]` float32 map, as five float64 scalars.

  Returns (sum of squares of the negative values, of the positive values, sum of |m|, number
  of negative values, of positive values), as OpenCV's cv::sum gives them (zeros count in
  neither side). Each row is summed in float32 (<= W terms), the rows in float64: ~1e-7
  relative, far below the AGGD grid spacing, at float32 speed; counts are exact. Each sum is
  one cheap elementwise op feeding one row reduction (a `where` on a boolean mask, or a bool
  -> float count, costs twice as much), and the two counts share one reduction.
  """
  def image_sum(x):
    return x.sum(-1).astype(jnp.float64).sum(-1)[0]
  # max(m, 0)^2 is m*m rounded once where m > 0, else 0: OpenCV's squares, split by sign.
  pos_sq = image_sum(rounded(jnp.square(jnp.maximum(m, 0)), zero))
  neg_sq = image_sum(rounded(jnp.square(jnp.minimum(m, 0)), zero))
  abs_sum = image_sum(jnp.abs(m))
  sign = jnp.sign(m)
  w = m.shape[-1]
  base = 2 * w + 1
  if w * (base + 1) < 2 ** 24:
    # Per row, nonzero * base + balance (n_pos + n_neg and n_pos - n_neg, |balance| <= W <
    # base / 2): non-negative integers below 2^24, so the float32 sum is exact in any order.
    rows = (jnp.abs(sign) * np.float32(base) + sign).sum(-1).astype(jnp.float64)
    nonzero_rows = jnp.floor((rows + w) / base)
    nonzero = nonzero_rows.sum(-1)[0]
    balance = (rows - nonzero_rows * base).sum(-1)[0]
  else:
    balance, nonzero = image_sum(sign), image_sum(jnp.abs(sign))
  return neg_sq, pos_sq, abs_sum, (nonzero - balance) / 2, (nonzero + balance) / 2


def _aggd_fit(m: jax.Array, zero: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """AGGD moment fit of one image's `[1, H, W]` map: (grid index, left, right sigma)."""
  neg_sq, pos_sq, abs_sum, n_neg, n_pos = _moment_sums(m, zero)
  total = m.shape[-2] * m.shape[-1]
  left = jnp.sqrt(neg_sq / n_neg)
  right = jnp.sqrt(pos_sq / n_pos)
  g = left / right
  rhat = (abs_sum / total) ** 2 / ((neg_sq + pos_sq) / total)
  rhat_norm = rhat * (g ** 3 + 1) * (g + 1) / (g ** 2 + 1) ** 2
  index = jnp.searchsorted(jnp.asarray(_MIDPOINTS), rhat_norm, side='right')
  index = jnp.minimum(index, _GRID.size - 1)
  return index, left, right


# The four neighbour directions (dy, dx) of OpenCV's paired products: H, V, D1, D2.
_SHIFTS = ((0, 1), (1, 0), (1, 1), (-1, 1))


def _scale_features(x: jax.Array, zero: jax.Array) -> list[jax.Array]:
  """The 18 features of one image at one scale, `x` `[1, H, W]`, as float64 scalars."""
  z = _mscn(x, zero)
  grid = jnp.asarray(_GRID)
  mean_factor = jnp.asarray(_MEAN_FACTOR)
  index, left, right = _aggd_fit(z, zero)
  feats = [grid[index], (left * left + right * right) / 2]
  for dy, dx in _SHIFTS:  # Each product is recomputed inside its sums' fused loops.
    index, left, right = _aggd_fit(_mul(z, _shifted(z, dy, dx), zero), zero)
    feats += [grid[index], (right - left) * mean_factor[index], left ** 2, right ** 2]
  return feats


def _image_features(image: jax.Array, zero: jax.Array) -> jax.Array:
  """One image `[H, W, C]` -> its `[36]` float32 features.

  One image at a time: its full-size float32 maps (about 1 MiB each at 512x512) stay in
  cache, and a score never depends on the rest of the batch.
  """
  grey = to_grey(image[None], zero)
  feats = _scale_features(grey, zero) + _scale_features(half_size(grey, zero), zero)
  return jnp.stack(feats).astype(jnp.float32)


_features_one = jax.jit(_image_features)


@functools.partial(jax.jit, static_argnums=2)
def _features_sharded(images: jax.Array, zero: jax.Array, mesh) -> jax.Array:
  """`[B, H, W, C]` sharded over the mesh's 'data' axis: each device maps over its images."""
  spec = jax.sharding.PartitionSpec('data')
  local = lambda x, z: jax.lax.map(lambda im: _image_features(im, z), x)
  return jax.shard_map(local, mesh=mesh_lib.auto_axes(mesh),
                       in_specs=(spec, jax.sharding.PartitionSpec()), out_specs=spec)(images, zero)


@jax.jit
def _predict(scaled, support_vectors, alpha, rho, gamma, zero):
  # OpenCV: float32 differences, squared and summed in float64; the exponent rounded to
  # float32 and its float32 exp; the weighted sum in float64.
  diff = (support_vectors[None] - scaled[:, None, :]).astype(jnp.float64)
  exponent = ((diff * diff).sum(-1) * -gamma).astype(jnp.float32)
  kernel = opencv_exp(exponent, zero).astype(jnp.float64)
  return kernel @ alpha - rho


def scale_features(features: np.ndarray, model: BrisqueModel) -> np.ndarray:
  """Raw features `[B, 36]` -> [-1, 1] with the range table, in float32 like OpenCV.

  Done in numpy: each float32 operation rounded exactly once, in OpenCV's order
  (lower + (upper - lower) * (v - min) / (max - min)), whatever the batch size.
  """
  lo = model.feature_min.astype(np.float32)
  hi = model.feature_max.astype(np.float32)
  f = np.asarray(features, np.float32)
  return np.float32(-1) + np.float32(2) * (f - lo) / (hi - lo)


def _check_images(images) -> None:
  check_batch(images, name='brisque images', channels=(1, 3, 4))
  if np.shape(images)[0] == 0:
    raise UserInputError(f'brisque images: empty batch (shape {np.shape(images)}).')
  h, w = np.shape(images)[1:3]
  if min(h, w) < 2 * _MIN_SIDE:
    raise UserInputError(
        f'brisque images: {h}x{w} is too small; BRISQUE needs at least '
        f'{2 * _MIN_SIDE}x{2 * _MIN_SIDE} pixels (its half scale must exceed the 7x7 window).')
  dtype = np.asarray(images).dtype if not hasattr(images, 'dtype') else images.dtype
  # jnp.issubdtype, not numpy's: bfloat16 (what a model computing in bf16 hands back) is
  # not an np.floating subtype but holds 0..255 levels exactly, as float32 does.
  if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
    raise UserInputError(f'brisque images: expected uint8 or float pixels, got dtype {dtype}.')
  # The 8-bit grey conversion would clip larger levels (16-bit RGB would score as white).
  checks.check_integer_levels(images, metric='brisque', name='images')
  checks.check_float_levels(images, metric='brisque', name='images', as_peer='as OpenCV')


def _pad_to_mesh(images, mesh):
  n = mesh_lib.data_size(mesh)
  pad = -images.shape[0] % n
  images = np.asarray(images)
  if pad:
    images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
  return mesh_lib.shard_batch(images, mesh)


_COMPILED = set()  # (image shape, dtype) that `_features_one` has been compiled for.


def _one_image(image) -> np.ndarray:
  with jax.enable_x64(True):  # A per-thread setting: each worker sets it itself.
    return np.asarray(_features_one(image, np.int32(0)))


def brisque_features(images, *, mesh=None, threads: int = 1) -> np.ndarray:
  """The 36 BRISQUE features of each image, as OpenCV's `QualityBRISQUE.computeFeatures`.

  Without a mesh, the images go one at a time through one compiled program (`threads` of
  them at once); each image's maps then stay in cache, and an image's features are the same
  bits whatever batch it comes in.

  Args:
    images: `[B, H, W, C]`, C in (1, 3 RGB, 4 RGBA; alpha ignored), uint8 or float in
      [0, 255]; H, W >= 16.
    mesh: optional `('data', 'model')` mesh; the batch is sharded over 'data' (padded to a
      multiple of its size) and each device maps over its own images.
    threads: images computed concurrently when there is no mesh. XLA already spreads each
      image over the cores; on a 2-core CPU 2 threads gained nothing when idle and ran 2x
      slower when other jobs shared the CPU (docs/benchmarks.md), hence 1 by default.

  Returns:
    `[B, 36]` float32: per scale (full, half), MSCN shape and variance, then for H, V, D1,
    D2 the product's shape, mean, left and right variance.
  """
  images = checks.as_array(images, metric='brisque', name='images')
  _check_images(images)
  if checks.is_float(images.dtype) and images.dtype.itemsize < 4:
    # float16/bfloat16 hold 0..255 levels exactly in float32; converting here runs the
    # float32 program, whose roundings match OpenCV's (a bf16 input fused the grey
    # conversion differently: 1 ulp off, 6e-3 on the score).
    images = images.astype(np.float32)
  b = images.shape[0]
  if mesh is not None:
    with jax.enable_x64(True):
      return np.asarray(_features_sharded(_pad_to_mesh(images, mesh), np.int32(0), mesh))[:b]
  threads = max(1, min(b, threads))
  if threads == 1:
    return np.stack([_one_image(images[i]) for i in range(b)])
  done = []
  signature = (images.shape[1:], str(images.dtype))
  if signature not in _COMPILED:  # Compile on one image before the workers race to.
    done.append(_one_image(images[0]))
    _COMPILED.add(signature)
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    done += pool.map(_one_image, (images[i] for i in range(len(done), b)))
  return np.stack(done)


@functools.lru_cache(maxsize=8)
def _cached_model(model: str, range_file: str, _stamp: tuple) -> BrisqueModel:
  return load_model(model, range_file)


def _resolve_model(model, range_file) -> BrisqueModel:
  if isinstance(model, BrisqueModel):
    return model
  if model is None or range_file is None:
    raise UserInputError(
        'brisque: pass model= and range_file= (e.g. brisque_model_live.yml and '
        'brisque_range_live.yml from opencv_contrib/modules/quality/samples), or a '
        'BrisqueModel from vit_jax.metrics.brisque_model.load_model.')
  paths = [os.path.abspath(os.fspath(p)) for p in (model, range_file)]
  for p in paths:
    if not os.path.isfile(p):
      raise FileNotFoundError(f'{p}: no such BRISQUE model/range file.')
  stamp = tuple((os.path.getmtime(p), os.path.getsize(p)) for p in paths)
  return _cached_model(paths[0], paths[1], stamp)


def predict(features, model: BrisqueModel, *, clip: bool = True) -> np.ndarray:
  """SVR scores `[B]` (float64) for raw features `[B, 36]`; clamped to [0, 100] if `clip`."""
  features = np.asarray(features, np.float32)
  if features.ndim != 2 or features.shape[1] != model.support_vectors.shape[1]:
    raise UserInputError(
        f'brisque features: expected [B, {model.support_vectors.shape[1]}], got '
        f'{features.shape}.')
  scaled = scale_features(features, model)
  with jax.enable_x64(True):
    scores = np.asarray(_predict(
        jnp.asarray(scaled), jnp.asarray(model.support_vectors, jnp.float32),
        jnp.asarray(model.alpha, jnp.float64), model.rho, model.gamma, np.int32(0)))
  return np.clip(scores, 0, 100) if clip else scores


def brisque(images, model=None, range_file=None, *, mesh=None, clip: bool = True,
            threads: int = 1) -> np.ndarray:
  """BRISQUE score of each image (lower is better), as OpenCV's `QualityBRISQUE_compute`.

  Args:
    images: `[B, H, W, C]` RGB (C=3), RGBA (C=4, alpha ignored) or grey (C=1); uint8, or float
      in [0, 255]; H, W >= 16. A float image whose maximum is <= 1 ([0, 1] or [-1, 1]) or
      whose values leave 0..255 by more than a quarter of that range raises a
      `UserInputError`.
    model: path of the SVR model, OpenCV YAML (`brisque_model_live.yml`) or libsvm text; or a
      `BrisqueModel`. Nothing is downloaded: pass the file you have.
    range_file: path of the feature range table (`brisque_range_live.yml` or an `svm-scale
      -s` file); ignored when `model` is a `BrisqueModel`.
    mesh: optional device mesh; the batch is sharded over its 'data' axis.
    clip: clamp to [0, 100] as OpenCV does.
    threads: images scored concurrently without a mesh (see `brisque_features`).

  Returns:
    `[B]` float64 scores. A flat (constant) image has no statistics and scores NaN.
  """
  svr = _resolve_model(model, range_file)
  return predict(brisque_features(images, mesh=mesh, threads=threads), svr, clip=clip)
