"""Images in: files and arrays validated into `[B, H, W, C]` batches with clear errors."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from vision_core.errors import UserInputError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def check_batch(images, *, name: str = 'images', channels: Sequence[int] = (3,)) -> None:
  """Raises `UserInputError` unless `images` is `[B, H, W, C]` with C in `channels`."""
  shape = np.shape(images)
  if len(shape) != 4:
    hint = ' (a single image? add a batch axis: x[None])' if len(shape) == 3 else ''
    raise UserInputError(
        f'{name}: expected a 4-D batch [B, H, W, C], got shape {shape}{hint}.')
  if shape[-1] not in channels:
    raise UserInputError(
        f'{name}: expected {" or ".join(map(str, channels))} channels in the last axis '
        f'[B, H, W, C], got shape {shape} ({shape[-1]} channels).')


def read_image(path: str | os.PathLike, *, mode: str = 'RGB') -> np.ndarray:
  """Reads an image file as `[H, W, C]` uint8 (`mode` 'RGB', 'L' or 'RGBA').

  Raises `UserInputError` naming the file if it is missing, truncated or not an image.
  """
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  try:
    with Image.open(path) as im:
      im.load()
      converted = im.convert(mode)
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such image file.') from None
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
    raise UserInputError(f'{path}: not a readable image ({e}).') from None
  array = np.asarray(converted, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def list_images(directory: str | os.PathLike) -> list[str]:
  """Sorted image files directly inside `directory` (by extension, case-insensitive)."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise UserInputError(f'{directory}: not a directory of images.')
  return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                if f.lower().endswith(IMAGE_EXTENSIONS))


def to_model_range(images_uint8) -> np.ndarray:
  """uint8 `[..., C]` in [0, 255] -> float32 in [-1, 1], the official ViT scaling."""
  return (np.asarray(images_uint8, np.float32) - 127.5) / 127.5
