"""The study's input images: `skimage.data` names, files or folders -> square uint8 RGB.

Conventions (stated in the report): an RGBA image is composited on a flat background
(`alpha_background`, white by default) since neither the generator nor the metrics model
transparency; grey images are repeated to RGB (or kept grey for a 1-channel generator);
each image is center-cropped to a square and resized (Pillow bicubic, antialiased) to the
generator's S x S.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from vision_core import images as images_lib
from vision_core.errors import UserInputError

SKIMAGE_PREFIX = 'skimage:'


@dataclasses.dataclass(frozen=True)
class StudyImage:
  """name (file stem), source (where it came from), pixels uint8 `[S, S, C]`, note."""
  name: str
  source: str
  pixels: np.ndarray
  note: str = ''


def _skimage(name: str) -> np.ndarray:
  from skimage import data  # pylint: disable=g-import-not-at-top
  loader = getattr(data, name, None)
  if loader is None or not callable(loader) or name.startswith('_'):
    raise UserInputError(f'images: skimage:{name} is not an image of skimage.data (e.g. '
                         'astronaut, chelsea, coffee, logo, rocket).')
  return np.asarray(loader())


def expand(spec: str) -> list[str]:
  """Comma-separated entries -> list of `skimage:NAME` / file paths (folders listed)."""
  entries = [e.strip() for e in str(spec).split(',') if e.strip()]
  if not entries:
    raise UserInputError('images: empty; give skimage:NAME entries, image files or folders.')
  out = []
  for entry in entries:
    if entry.startswith(SKIMAGE_PREFIX):
      out.append(entry)
    elif os.path.isdir(entry):
      found = images_lib.list_images(entry)
      if not found:
        raise UserInputError(f'images: folder {entry} holds no images.')
      out.extend(found)
    elif os.path.isfile(entry):
      out.append(entry)
    else:
      raise UserInputError(f'images: {entry} is neither skimage:NAME, a file nor a folder.')
  return out


def square(image: np.ndarray, size: int, channels: int) -> np.ndarray:
  """Center crop to a square, resize to `size` (bicubic), convert to `channels` (1 or 3)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  crop = image[top:top + side, left:left + side]
  pil = Image.fromarray(crop[..., 0] if crop.shape[-1] == 1 else crop)
  pil = pil.convert('L' if channels == 1 else 'RGB')
  if pil.size != (size, size):
    pil = pil.resize((size, size), Image.BICUBIC)
  out = np.asarray(pil, np.uint8)
  return out[..., None] if out.ndim == 2 else out


def load(spec: str, *, size: int, channels: int, alpha_background: int = 255
         ) -> list[StudyImage]:
  """The study images named by `spec`, each `[size, size, channels]` uint8."""
  if not 0 <= int(alpha_background) <= 255:
    raise UserInputError(f'alpha_background={alpha_background}: expected 0..255.')
  result, names = [], set()
  for entry in expand(spec):
    if entry.startswith(SKIMAGE_PREFIX):
      name = entry[len(SKIMAGE_PREFIX):]
      raw = _skimage(name)
    else:
      name = os.path.splitext(os.path.basename(entry))[0]
      raw = images_lib.read_image(entry, mode='RGBA') if _has_alpha(entry) else \
          images_lib.read_image(entry)
    if name in names:
      raise UserInputError(f'images: two images are named {name!r}; rename one.')
    names.add(name)
    if raw.dtype != np.uint8:
      raise UserInputError(f'images: {entry} is {raw.dtype}, expected 8-bit pixels.')
    if raw.ndim == 2:
      raw = raw[..., None]
    note = ''
    if raw.shape[-1] == 4:
      raw = images_lib.composite_alpha(raw, alpha_background)
      note = f'RGBA composited on grey level {int(alpha_background)}'
    result.append(StudyImage(name, entry, square(raw, size, channels), note))
  return result


def _has_alpha(path: str) -> bool:
  # Only the mode is probed, which the EXIF orientation does not change; the pixels come from
  # images_lib.read_image, which applies it.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return im.mode in ('RGBA', 'LA', 'PA') or 'transparency' in im.info
  except Exception:  # pylint: disable=broad-except
    return False  # read_image then raises the message naming the file.
