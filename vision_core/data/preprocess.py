"""Per-example preprocessing ops, chosen by a spec string such as
`'inception_crop(224)|flip_lr|value_range(-1, 1)'` (the big_vision `pp` style).

Each op maps a record `{'image': [H, W, C], 'label': int, ...}` to a new record; random ops
draw from the `np.random.Generator` grain derives from the loader seed and the example index,
so a pipeline is deterministic and resumable. Images stay uint8 until `value_range`.
`register` adds an op; `parse(spec)` -> `Preprocess` (a grain `RandomMapTransform`).
"""

from __future__ import annotations

import ast
import math
from typing import Any, Callable

import grain.python as grain
import numpy as np
from PIL import Image

from vision_core.errors import UserInputError

Record = dict[str, Any]
_OPS: dict[str, tuple[Callable[..., Callable], bool]] = {}
# Ops that take uint8 [0, 255] images only (Pillow has no float RGB images): `parse` refuses
# them after `value_range`, which makes floats, rather than each loader thread failing with
# Pillow's "Cannot handle this data type".
_UINT8_OPS: set[str] = set()
_TO_FLOAT_OPS = {'value_range'}


def register(name: str, *, random: bool = False, uint8: bool = False):
  """Decorator: `fn(*args, **kwargs)` -> `op(record[, rng])`, used as `name(args)` in specs.
  `uint8`: the op takes uint8 images only (so it must come before `value_range`)."""
  def wrap(factory):
    _OPS[name] = (factory, random)
    if uint8:
      _UINT8_OPS.add(name)
    else:
      _UINT8_OPS.discard(name)
    return factory
  return wrap


def _size2(size) -> tuple[int, int]:
  """An int or (h, w) as (h, w); else `ValueError` (`Preprocess` names the op)."""
  sizes = [size, size] if np.isscalar(size) else list(size)
  if len(sizes) != 2 or not all(isinstance(s, (int, np.integer)) and s > 0 for s in sizes):
    raise ValueError(f'size {size!r}: expected a positive int or (height, width)')
  return int(sizes[0]), int(sizes[1])


def apply_pil(image: np.ndarray, fn: Callable[[Image.Image], Image.Image]) -> np.ndarray:
  """`fn` (Pillow image -> Pillow image) on a uint8 `[H, W, C]` array, C 1 (as mode 'L') or
  3; returns uint8 `[h, w, C]`."""
  grey = image.shape[-1] == 1
  out = np.asarray(fn(Image.fromarray(image[..., 0] if grey else image)))
  return out[..., None] if grey else out


# Pillow's resampling filters by name (the `method` of the resize ops).
RESAMPLE = {'nearest': Image.NEAREST, 'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC,
            'lanczos': Image.LANCZOS, 'box': Image.BOX, 'hamming': Image.HAMMING}


def _resample(method: str) -> int:
  if method not in RESAMPLE:
    raise ValueError(f'method {method!r}: expected one of {", ".join(RESAMPLE)}')
  return RESAMPLE[method]


def _resize(image: np.ndarray, hw: tuple[int, int], resample: int = Image.BILINEAR
            ) -> np.ndarray:
  """Pillow resize (antialiased when shrinking) of uint8 `[H, W, C]` to `[h, w, C]`."""
  if image.shape[:2] == hw:
    return image
  return apply_pil(image, lambda pil: pil.resize((hw[1], hw[0]), resample))


@register('resize', uint8=True)
def resize(size, method: str = 'bilinear'):
  """Resize to `size` (int: square, or (h, w)); `method`: a Pillow filter (`RESAMPLE`)."""
  hw, resample = _size2(size), _resample(method)
  return lambda r: {**r, 'image': _resize(r['image'], hw, resample)}


@register('resize_small', uint8=True)
def resize_small(size: int, method: str = 'bilinear'):
  """Resize so that the shorter side is `size`, keeping the aspect ratio."""
  if not np.isscalar(size):  # a pair would only fail in the loader: 'tuple / int'
    raise ValueError(f'size {size!r}: expected a positive int (the shorter side)')
  _size2(size)
  resample = _resample(method)
  def op(r):
    h, w = r['image'].shape[:2]
    s = size / min(h, w)
    return {**r, 'image': _resize(r['image'], (round(h * s), round(w * s)), resample)}
  return op


@register('central_crop')
def central_crop(size):
  """The central `size` crop (int or (h, w)); the image must be at least that large."""
  ch, cw = _size2(size)
  def op(r):
    h, w = r['image'].shape[:2]
    if h < ch or w < cw:
      raise UserInputError(f'central_crop({ch}, {cw}): image is only {h}x{w}; resize first.')
    top, left = (h - ch) // 2, (w - cw) // 2
    return {**r, 'image': r['image'][top:top + ch, left:left + cw]}
  return op


@register('random_crop', random=True)
def random_crop(size, pad: int = 0, mode: str = 'constant'):
  """A uniformly placed `size` crop, after padding `pad` pixels per side (CIFAR style).

  `mode` is numpy's pad mode: 'constant' (zeros), 'reflect' or 'edge'. Zero borders are in
  almost every crop but never in a test image; a convolutional stem learns them as a cue
  (measured: 3 points better on padded crops than on the clean images), reflection does not.
  """
  ch, cw = _size2(size)
  if not isinstance(pad, (int, np.integer)) or pad < 0:
    raise ValueError(f'pad={pad!r}: expected an int >= 0')
  if mode not in ('constant', 'reflect', 'edge'):
    raise UserInputError(f'random_crop(mode={mode!r}): expected constant, reflect or edge.')
  def op(r, rng):
    image = r['image']
    if pad:
      image = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
    h, w = image.shape[:2]
    if h < ch or w < cw:
      raise UserInputError(f'random_crop({ch}, {cw}): image is only {h}x{w}; resize first.')
    top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    return {**r, 'image': image[top:top + ch, left:left + cw]}
  return op


@register('inception_crop', random=True, uint8=True)
def inception_crop(size, area_min: float = 5, area_max: float = 100):
  """Inception-style crop: area in [area_min, area_max]% of the image, aspect ratio
  log-uniform in [3/4, 4/3], up to 10 tries (else the whole image), resized to `size`."""
  hw = _size2(size)
  # Percent, as in big_vision; out of order or negative they failed in the loader threads
  # (numpy's "high - low < 0", "math domain error").
  if not (isinstance(area_min, (int, float)) and isinstance(area_max, (int, float))
          and 0 <= area_min <= area_max <= 100 and area_max > 0):
    raise ValueError(f'area_min={area_min!r}, area_max={area_max!r}: expected percentages of '
                     'the image area with 0 <= area_min <= area_max <= 100, area_max > 0')
  if area_max <= 1:  # torchvision's RandomResizedCrop takes fractions: (0.08, 1) there.
    raise ValueError(f'area_max={area_max!r}: the areas are percentages (big_vision\'s '
                     f'convention), so this crops at most {area_max}% of the image; for '
                     f'fractions ({area_min}, {area_max}) pass ({100 * area_min:g}, '
                     f'{100 * area_max:g})')
  log_ratio = (math.log(3 / 4), math.log(4 / 3))
  def op(r, rng):
    image = r['image']
    h, w = image.shape[:2]
    for _ in range(10):
      area = h * w * rng.uniform(area_min / 100, area_max / 100)
      ratio = math.exp(rng.uniform(*log_ratio))
      ch, cw = round(math.sqrt(area / ratio)), round(math.sqrt(area * ratio))
      if 0 < ch <= h and 0 < cw <= w:
        top, left = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        image = image[top:top + ch, left:left + cw]
        break
    return {**r, 'image': _resize(image, hw)}
  return op


@register('flip_lr', random=True)
def flip_lr():
  """Mirror left-right with probability 1/2."""
  return lambda r, rng: {**r, 'image': r['image'][:, ::-1]} if rng.random() < 0.5 else r


@register('to_rgb')
def to_rgb():
  """Grayscale `[H, W, 1]` -> `[H, W, 3]`; RGB unchanged."""
  def op(r):
    image = r['image']
    return {**r, 'image': np.repeat(image, 3, -1) if image.shape[-1] == 1 else image}
  return op


@register('value_range')
def value_range(vmin: float = -1, vmax: float = 1):
  """uint8 [0, 255] -> float32 [vmin, vmax]; (-1, 1) is the official ViT scaling."""
  scale = (vmax - vmin) / 255.0
  return lambda r: {**r, 'image': np.asarray(r['image'], np.float32) * np.float32(scale)
                    + np.float32(vmin)}


def _parse_call(text: str) -> tuple[str, tuple, dict]:
  try:
    node = ast.parse(text.strip() if '(' in text else text.strip() + '()', mode='eval').body
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name):
      raise ValueError('not a call')
    args = tuple(ast.literal_eval(a) for a in node.args)
    kwargs = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
  except (SyntaxError, ValueError) as e:
    raise UserInputError(f'preprocessing op {text.strip()!r}: expected name or name(args) '
                         f'with literal arguments ({e}).') from None
  return node.func.id, args, kwargs


class Preprocess(grain.RandomMapTransform):
  """A parsed op chain; `random_map(record, rng)` applies it (deterministic ops ignore rng)."""

  def __init__(self, spec: str):
    self.spec = spec
    self.ops = []
    floats = None  # the op that made the images float, if any
    for part in filter(str.strip, spec.split('|')):
      name, args, kwargs = _parse_call(part)
      if name not in _OPS:
        raise UserInputError(f'unknown preprocessing op {name!r} in {spec!r}; known ops: '
                             f'{", ".join(sorted(_OPS))}.')
      if floats and name in _UINT8_OPS:
        raise UserInputError(f'preprocessing op {part.strip()!r} in {spec!r} comes after '
                             f'{floats!r}, which makes the images float; {name} takes uint8 '
                             f'images: put it before {floats.split("(")[0]}.')
      if name in _TO_FLOAT_OPS:
        floats = part.strip()
      factory, is_random = _OPS[name]
      try:
        self.ops.append((factory(*args, **kwargs), is_random))
      except (TypeError, ValueError) as e:  # a wrong argument count or value
        raise UserInputError(f"preprocessing op {part.strip()!r}: {str(e).rstrip('.')}.") from None

  def random_map(self, element: Record, rng: np.random.Generator) -> Record:
    for op, is_random in self.ops:
      element = op(element, rng) if is_random else op(element)
    return element

  def __call__(self, element: Record, rng: np.random.Generator | None = None) -> Record:
    return self.random_map(element, rng or np.random.default_rng(0))

  def __repr__(self) -> str:
    return f'Preprocess({self.spec!r})'


def parse(spec: str) -> Preprocess:
  """`'op1(args)|op2|...'` -> a `Preprocess` transform. An empty spec is the identity."""
  return Preprocess(spec)


def known_ops() -> list[str]:
  return sorted(_OPS)


# Registers 'randaugment' (its own module: fourteen Pillow ops and their magnitudes).
from vision_core.data import randaugment as _randaugment  # pylint: disable=wrong-import-position,unused-import
