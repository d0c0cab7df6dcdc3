"""Input checks shared by the metrics: clear messages before any JAX tracing happens."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from vision_core import images as images_lib
from vision_core.errors import UserInputError


def as_array(x, *, metric: str, name: str):
  """`x` itself when a numpy or JAX array; any other array-like (nested lists, a CPU torch
  tensor) as a numpy array, so that the checks and jit see an array and not a pytree of
  scalars or a foreign dtype (which failed deep inside JAX or numpy)."""
  if isinstance(x, (np.ndarray, jax.Array)):
    return x
  try:
    return np.asarray(x)
  except (TypeError, ValueError, RuntimeError) as e:  # ragged lists, GPU/grad torch tensors
    raise UserInputError(
        f'{metric}: {name} must be a numpy or JAX array [B, H, W, C], got a '
        f'{type(x).__name__} that numpy cannot convert ({e}).') from None


def as_pair(a, b, *, metric: str):
  """`as_array` of the two batches `a` and `b` of a pair metric."""
  return as_array(a, metric=metric, name='a'), as_array(b, metric=metric, name='b')


def check_pair(a, b, *, metric: str, min_size: int = 1) -> tuple[int, int, int, int]:
  """Checks two `[B, H, W, C]` batches of the same shape; returns that shape.

  Args:
    a: the reference batch (originals).
    b: the batch compared with it (reconstructions).
    metric: the metric's name, used in the messages.
    min_size: the smallest allowed height and width.
  """
  for name, x in (('a', a), ('b', b)):
    shape = np.shape(x)
    if len(shape) != 4:
      raise UserInputError(f'{metric}: {name} must be a 4-D batch [B, H, W, C], got shape '
                           f'{shape}{images_lib.batch_axis_hint(shape)}.')
    dtype = dtype_of(x)
    # jnp.issubdtype, not numpy's: bfloat16 and the other ml_dtypes floats (what a model
    # computing in bf16 hands back) are not np.number subtypes but are real numbers.
    if not (jnp.issubdtype(dtype, jnp.integer) or jnp.issubdtype(dtype, jnp.floating)):
      raise UserInputError(f'{metric}: {name} must be real numbers, got dtype {dtype}.')
  sa, sb = np.shape(a), np.shape(b)
  if sa[-1] != sb[-1]:
    raise UserInputError(
        f'{metric}: channel counts differ: a has {sa[-1]} channels (shape {sa}), '
        f'b has {sb[-1]} (shape {sb}); convert both to the same colour mode first.')
  if sa != sb:
    raise UserInputError(
        f'{metric}: a and b must have the same shape [B, H, W, C], got {sa} and {sb}.')
  if sa[0] == 0:
    raise UserInputError(f'{metric}: empty batch (shape {sa}).')
  if sa[-1] == 0:
    raise UserInputError(f'{metric}: images have no channels (shape {sa}); expected C >= 1.')
  for name, x in (('a', a), ('b', b)):
    # Host arrays are checked here, before any compilation; device arrays inside the jitted
    # metric (`raise_if_not_finite`), so that they are not copied back to the host.
    if isinstance(x, np.ndarray) and x.dtype.kind == 'f' and not np.isfinite(x).all():
      raise UserInputError(f'{metric}: {name} contains NaN or infinite values.')
  if min(sa[1], sa[2]) < min_size:
    # [B, C, H, W] (PyTorch's layout) reads as images C pixels high: say so.
    layout = (' (channels first, as PyTorch stores them? x.permute(0, 2, 3, 1) or '
              'np.moveaxis(x, 1, -1) gives [B, H, W, C])'
              if sa[1] in (1, 3, 4) and sa[-1] > 4 else '')
    raise UserInputError(
        f'{metric}: images of {sa[1]}x{sa[2]} pixels are too small; height and width must be '
        f'at least {min_size}{layout}.')
  check_dtypes(a, b, metric=metric)
  return sa


def dtype_of(x) -> np.dtype:
  """The dtype of an array or nested list; a JAX array is not copied to the host for it."""
  dtype = getattr(x, 'dtype', None)
  return np.dtype(dtype) if dtype is not None else np.asarray(x).dtype


def is_float(dtype) -> bool:
  return bool(jnp.issubdtype(dtype, jnp.floating))  # jnp: bfloat16 counts too


def _convention(dtype) -> str:
  if dtype == np.uint8:
    return '8-bit levels 0..255'
  if dtype == np.uint16:
    return '16-bit (or 10/12-bit) levels'
  return 'floats, usually [0, 1]' if is_float(dtype) else f'{dtype} integers'


def check_dtypes(a, b, *, metric: str, names: tuple[str, str] = ('a', 'b')) -> None:
  """Raises unless a and b share a value convention: the same dtype, or two float dtypes.

  uint8 originals against [0, 1] float reconstructions, or 8-bit against 16-bit levels, are
  compared value by value without any error and give meaningless numbers. No exception is
  made for float values that happen to be whole numbers 0..255: that takes a pass over the
  data, and a [0, 1] image of only 0s and 1s (a mask, a saturated image) would pass it.
  Float precisions may differ (float32 against float64): they hold the same scale.
  """
  da, db = dtype_of(a), dtype_of(b)
  if da == db or (is_float(da) and is_float(db)):
    return
  if is_float(da) or is_float(db):
    hint = ('np.round(x * 255).clip(0, 255).astype(np.uint8) for [0, 1] floats, or '
            'x.astype(np.float32) / 255 for 8-bit levels (then data_range=1.0)')
  else:
    hint = '(x >> 8).astype(np.uint8) for 16-bit levels, x.astype(np.uint8) for 0..255 values'
  raise UserInputError(
      f'{metric}: {names[0]} is {da} but {names[1]} is {db} ({_convention(da)} against '
      f'{_convention(db)}): compared value by value, the score would mean nothing; convert '
      f'one to the other\'s dtype and range first, e.g. {hint}.')


def _array_module(x):
  """numpy for a host array, jax.numpy otherwise: a JAX batch is reduced on its device, not
  copied to the host to find its min and max."""
  return np if isinstance(x, np.ndarray) else jnp


def value_bounds(x, *, axis=None):
  """(min, max) of the array `x` (over `axis`; all of it by default), where it lives."""
  xp = _array_module(x)
  return xp.min(x, axis=axis), xp.max(x, axis=axis)


def _bounds(a, b) -> tuple[float, float]:
  """(min, max) over a and b."""
  (lo_a, hi_a), (lo_b, hi_b) = value_bounds(a), value_bounds(b)
  return min(float(lo_a), float(lo_b)), max(float(hi_a), float(hi_b))


def resolve_data_range(a, b, data_range, *, metric: str) -> float:
  """`data_range` checked, or 255.0 for a uint8 pair when it is None; call after check_pair.

  Only uint8 gets a default: a float dtype does not say whether it holds [0, 1] or [0, 255]
  (a [0, 1] pair scored with 255 gets an SSIM near 1, whatever the images), and uint16 often
  holds 10- or 12-bit data. scikit-image likewise refuses float images without data_range.
  """
  if data_range is not None:
    return check_data_range(data_range, metric=metric)
  dtype = dtype_of(a)  # check_pair has made b's dtype the same, or both float
  if dtype == np.uint8:
    return 255.0
  for name, x in (('a', a), ('b', b)):  # JAX arrays have not been checked yet: NaN first
    if not bool(jnp.isfinite(x).all()):
      raise UserInputError(f'{metric}: {name} contains NaN or infinite values.')
  lo, hi = _bounds(a, b)
  raise UserInputError(
      f'{metric}: pass data_range for {dtype} images (their values span [{lo:g}, {hi:g}]): '
      'data_range=1.0 for floats in [0, 1], 255.0 for values 0..255, 65535.0 for 16-bit '
      'levels (4095.0 for 12-bit data stored in 16 bits). Only uint8 has a default (255.0): '
      'other dtypes do not say which range they hold.')


def check_data_range(data_range, *, metric: str) -> float:
  """The value range (max - min) of the images, e.g. 255.0 for uint8 or 1.0 for [0, 1]."""
  # float(True) would silently give 1.0, and float('255') a number the caller never had.
  if isinstance(data_range, (bool, np.bool_, str, bytes)):
    raise UserInputError(f'{metric}: data_range must be a number, got {data_range!r}.')
  try:
    value = float(data_range)
  except (TypeError, ValueError):
    raise UserInputError(
        f'{metric}: data_range must be a positive number (255.0 for uint8 images, 1.0 for '
        f'[0, 1] floats), got {data_range!r}.') from None
  if not (math.isfinite(value) and value > 0):
    raise UserInputError(
        f'{metric}: data_range must be a positive finite number, got {data_range!r}.')
  return value


def raise_if_not_finite(finite, *, metric: str) -> None:
  """`finite` is the `[2]` flag pair (a finite, b finite) computed inside the jitted metric."""
  finite = np.asarray(finite)
  for name, ok in zip(('a', 'b'), finite):
    if not ok:
      raise UserInputError(f'{metric}: {name} contains NaN or infinite values.')


# Reconstructions may overshoot the nominal range a little (unclipped decoder output); a
# span this much wider than data_range means the range is wrong (uint8 levels with 1.0).
SPAN_SLACK = 1.5


def check_span(a, b, data_range: float, *, metric: str) -> None:
  """Raises when the values of a and b together span far more than `data_range`.

  NaNs compare false here and are reported by the finiteness checks instead.
  """
  lo, hi = _bounds(a, b)
  if hi - lo > SPAN_SLACK * data_range:
    raise UserInputError(
        f'{metric}: the values of a and b span [{lo:g}, {hi:g}], far wider than '
        f'data_range={data_range:g}; pass the width of the images\' value range (255.0 for '
        'uint8 or [0, 255] images, 1.0 for [0, 1] floats).')


def check_integer_levels(images, *, metric: str, name: str) -> None:
  """Raises unless an integer `[B, H, W, C]` batch holds 8-bit levels 0..255.

  For the ViT metrics, which scale by 127.5: 16-bit levels (uint16, or int32 from a 16-bit
  PNG) would be scored silently as an image saturated far beyond white. uint8 always passes.
  """
  dtype = dtype_of(images)
  if dtype == np.uint8 or not jnp.issubdtype(dtype, jnp.integer):
    return
  images = images if hasattr(images, 'dtype') else np.asarray(images)
  lo, hi = (int(v) for v in value_bounds(images))
  if lo < 0 or hi > 255:
    raise UserInputError(
        f'{metric} {name}: integer pixels must be 8-bit levels 0..255, got values in '
        f'[{lo}, {hi}] (dtype {dtype}); convert to 8 bits first (16-bit levels: '
        '(x >> 8).astype(np.uint8)).')


# Values beyond the nominal range by more than this fraction of it are on another scale
# (not an overshoot of an unclipped reconstruction).
_RANGE_SLACK = 0.25
_FLOAT_SLACK = _RANGE_SLACK * 255


def check_float_levels(images, *, metric: str, name: str, as_peer: str = '') -> None:
  """Raises unless each float image of `[B, H, W, C]` is finite and holds 0..255 values.

  For metrics that take float pixels on the 8-bit scale (BRISQUE, as OpenCV; the ViT-Score;
  the FID feature extractors). A [0, 1] image would be scored silently as a nearly black one
  (BRISQUE: 97 instead of 34 on an astronaut crop); its maximum <= 1 gives it away, as it
  does for [-1, 1] generator output. A float image that really is that dark can be passed
  as uint8: integer batches are not looked at here. Host batches (and nested lists) are read
  with numpy, JAX arrays on their devices; `as_peer` ('as OpenCV') ends the sentence.
  """
  if not is_float(dtype_of(images)):
    return
  images = images if hasattr(images, 'dtype') else np.asarray(images)
  if not bool(_array_module(images).isfinite(images).all()):  # NaN slips through `<` below
    raise UserInputError(f'{metric} {name}: the batch contains NaN or infinite pixels.')
  lo, hi = (np.asarray(v, np.float64) for v in value_bounds(images, axis=(1, 2, 3)))
  dtype = images.dtype
  takes = f'{metric} takes float pixels in [0, 255]' + (f', {as_peer}' if as_peer else '')
  for i in range(lo.size):
    span = f'image {i} ({dtype}) has values in [{lo[i]:g}, {hi[i]:g}]'
    if hi[i] <= 1:
      raise UserInputError(
          f'{metric} {name}: {span}, a [0, 1] or [-1, 1] scale; {takes}: pass x * 255 for '
          '[0, 1], (x + 1) * 127.5 for [-1, 1], or uint8 images.')
    if lo[i] < -_FLOAT_SLACK or hi[i] > 255 + _FLOAT_SLACK:
      raise UserInputError(
          f'{metric} {name}: {span}, not 0..255; {takes}: rescale them (x / 257 for 16-bit '
          'levels) or pass uint8 images.')


def check_within_range(images, data_range: float, *, metric: str, name: str) -> None:
  """Raises unless the values of `[B, H, W, C]` lie in [0, data_range], give or take a
  quarter of it (the slack of `check_float_levels`: an unclipped reconstruction).

  For extractors that divide by `data_range` (the FID Inception): the wrong one gives
  features of a saturated image without any error: uint8 levels with data_range=1.0
  (pytorch-fid's [0, 1] convention), or 16-bit levels with the default 255.
  """
  images = images if hasattr(images, 'dtype') else np.asarray(images)
  lo, hi = (float(v) for v in value_bounds(images))
  if not (math.isfinite(lo) and math.isfinite(hi)):
    raise UserInputError(f'{metric} {name}: the batch contains NaN or infinite pixels.')
  if lo < -_RANGE_SLACK * data_range or hi > (1 + _RANGE_SLACK) * data_range:
    raise UserInputError(
        f'{metric} {name}: values span [{lo:g}, {hi:g}] ({images.dtype}), not '
        f'[0, data_range={data_range:g}]; pass the width of the images\' value range '
        '(data_range=255.0 for 8-bit levels, 1.0 for [0, 1] floats) or rescale them.')
