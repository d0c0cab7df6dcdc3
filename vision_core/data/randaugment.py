"""RandAugment (Cubuk et al., 2020) as a preprocessing op: `randaugment(num_ops, magnitude)`.

For each image, `num_ops` ops are drawn uniformly (with replacement) from the 14 below and
applied in turn at strength `magnitude` out of 10 (the scale of timm's `rand-m9` and the
TF/big_vision implementations); geometric and enhancement ops get a random sign. The ops run
on the uint8 image through Pillow (as timm's do), so put the op before `value_range`:

  'inception_crop(224)|flip_lr|randaugment(2, 9)|value_range(-1, 1)'

At magnitude m (level = m / 10):
  shear_x/y     shear factor 0.3 * level           translate_x/y  0.45 * level of the side
  rotate        30 * level degrees                 brightness, color, contrast, sharpness:
  posterize     8 - round(4 * level) bits              enhancement factor 1 +- 0.9 * level
  solarize      threshold 256 - round(256 * level) autocontrast, equalize, identity: no level
Geometric ops fill uncovered pixels with grey 128 and use nearest-neighbour sampling.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from vision_core.data.preprocess import apply_pil, register
from vision_core.errors import UserInputError

FILL = 128
MAX_MAGNITUDE = 10


def _fill(image: Image.Image):
  return FILL if image.mode == 'L' else (FILL,) * 3


def _affine(image: Image.Image, coefficients) -> Image.Image:
  """Pillow's affine map (output pixel (x, y) reads input (a x + b y + c, d x + e y + f))."""
  return image.transform(image.size, Image.AFFINE, coefficients, resample=Image.NEAREST,
                         fillcolor=_fill(image))


def _shear_x(image, level, sign):
  return _affine(image, (1, sign * 0.3 * level, 0, 0, 1, 0))


def _shear_y(image, level, sign):
  return _affine(image, (1, 0, 0, sign * 0.3 * level, 1, 0))


def _translate_x(image, level, sign):
  return _affine(image, (1, 0, sign * round(0.45 * level * image.size[0]), 0, 1, 0))


def _translate_y(image, level, sign):
  return _affine(image, (1, 0, 0, 0, 1, sign * round(0.45 * level * image.size[1])))


def _rotate(image, level, sign):
  return image.rotate(sign * 30 * level, resample=Image.NEAREST, fillcolor=_fill(image))


def _enhance(enhancer):
  return lambda image, level, sign: enhancer(image).enhance(1 + sign * 0.9 * level)


def _posterize(image, level, sign):
  del sign
  return ImageOps.posterize(image, 8 - round(4 * level))


def _solarize(image, level, sign):
  del sign
  return ImageOps.solarize(image, 256 - round(256 * level))


def _no_level(op):
  return lambda image, level, sign: op(image)


# name -> fn(image: PIL.Image, level in [0, 1], sign +-1) -> PIL.Image
OPS: dict[str, Callable[[Image.Image, float, int], Image.Image]] = {
    'identity': _no_level(lambda image: image),
    'autocontrast': _no_level(ImageOps.autocontrast),
    'equalize': _no_level(ImageOps.equalize),
    'rotate': _rotate,
    'solarize': _solarize,
    'color': _enhance(ImageEnhance.Color),
    'posterize': _posterize,
    'contrast': _enhance(ImageEnhance.Contrast),
    'brightness': _enhance(ImageEnhance.Brightness),
    'sharpness': _enhance(ImageEnhance.Sharpness),
    'shear_x': _shear_x,
    'shear_y': _shear_y,
    'translate_x': _translate_x,
    'translate_y': _translate_y,
}


def apply_op(name: str, image: np.ndarray, magnitude: float, sign: int = 1) -> np.ndarray:
  """One op on a uint8 `[H, W, C]` image (C 1 or 3) -> uint8 `[H, W, C]`."""
  return apply_pil(image, lambda pil: OPS[name](pil, magnitude / MAX_MAGNITUDE, sign))


@register('randaugment', random=True, uint8=True)
def randaugment(num_ops: int = 2, magnitude: float = 9):
  """`num_ops` random ops of `OPS` at `magnitude` in [0, 10] (see the module docstring)."""
  if not isinstance(num_ops, int) or num_ops < 0:
    raise UserInputError(f'randaugment(num_ops={num_ops!r}): expected an integer >= 0.')
  if not 0 <= magnitude <= MAX_MAGNITUDE:
    raise UserInputError(f'randaugment(magnitude={magnitude!r}): expected a number in '
                         f'[0, {MAX_MAGNITUDE}].')
  names = list(OPS)

  def op(record, rng):
    image = record['image']
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
      raise UserInputError(f'randaugment: expected a uint8 [H, W, 1 or 3] image, got '
                           f'{image.dtype} {image.shape}; put it before value_range.')
    draws = [(OPS[names[rng.integers(len(names))]], 1 if rng.random() < 0.5 else -1)
             for _ in range(num_ops)]

    def chain(pil):  # all ops on one Pillow image: one conversion each way
      for fn, sign in draws:
        pil = fn(pil, magnitude / MAX_MAGNITUDE, sign)
      return pil
    return {**record, 'image': apply_pil(image, chain) if draws else image}
  return op
