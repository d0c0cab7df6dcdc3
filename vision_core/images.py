"""Images in: files and arrays validated into `[B, H, W, C]` batches with clear errors."""

from __future__ import annotations

import os
from typing import Sequence
import warnings

import numpy as np

from vision_core.errors import UserInputError

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.gif', '.tif', '.tiff', '.webp')


def batch_axis_hint(shape: tuple[int, ...]) -> str:
  """What to do with an array of `shape` that is not a `[B, H, W, C]` batch ('' if unsure)."""
  if len(shape) == 3 and shape[-1] in (1, 3, 4):
    return ' (a single image? add a batch axis: x[None])'
  if len(shape) == 3:
    # [B, H, W] grey batches are common (skimage, MNIST); x[None] would turn one into a
    # single image of W channels, H pixels high, and be scored without complaint.
    return ' (a batch of grey images? add a channel axis: x[..., None])'
  if len(shape) == 2:
    return ' (a single grey image? x[None, ..., None])'
  return ''


def check_batch(images, *, name: str = 'images', channels: Sequence[int] = (3,)) -> None:
  """Raises `UserInputError` unless `images` is `[B, H, W, C]` with C in `channels`."""
  shape = np.shape(images)
  if len(shape) != 4:
    hint = batch_axis_hint(shape)
    raise UserInputError(
        f'{name}: expected a 4-D batch [B, H, W, C], got shape {shape}{hint}.')
  if shape[-1] not in channels:
    raise UserInputError(
        f'{name}: expected {" or ".join(map(str, channels))} channels in the last axis '
        f'[B, H, W, C], got shape {shape} ({shape[-1]} channels).')


def read_image(path: str | os.PathLike, *, mode: str = 'RGB') -> np.ndarray:
  """Reads an image file as `[H, W, C]` uint8 (`mode` 'RGB', 'L' or 'RGBA'), shown upright.

  The EXIF orientation is applied (see `exif_upright`), as OpenCV's imread does, so `H` and
  `W` are those of the image as viewers show it.
  Raises `UserInputError` naming the file if it is missing, truncated or not an image.
  """
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  try:
    with Image.open(path) as im:
      im.load()
      # Turned after the conversion: to_8_bit needs the file's format, which a turned copy
      # lacks, and turning fewer bytes is cheaper.
      converted = exif_upright(im, path, to_8_bit(im, path).convert(mode))
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such image file.') from None
  # DecompressionBombError: more pixels than Pillow's guard allows (2 x MAX_IMAGE_PIXELS,
  # 179 M; a 200 MP phone photo has more); an Exception, not an OSError.
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
          Image.DecompressionBombError) as e:
    raise UserInputError(f'{path}: not a readable image ({e}).') from None
  array = np.asarray(converted, dtype=np.uint8)
  return array[..., None] if array.ndim == 2 else array


def _upright_transposes():
  """EXIF Orientation value -> the Pillow transpose that shows the stored pixels upright.

  The EXIF (TIFF tag 274) value says which side of the picture as shown the stored row 0 and
  column 0 are; 1 (row 0 top, column 0 left) needs nothing.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  t = Image.Transpose
  return {
      2: t.FLIP_LEFT_RIGHT,  # Row 0 top, column 0 right: mirrored left to right.
      3: t.ROTATE_180,       # Row 0 bottom, column 0 right.
      4: t.FLIP_TOP_BOTTOM,  # Row 0 bottom, column 0 left: mirrored top to bottom.
      5: t.TRANSPOSE,        # Row 0 left, column 0 top: rows and columns swapped.
      6: t.ROTATE_270,       # Row 0 right, column 0 top: turn 90 degrees clockwise.
      7: t.TRANSVERSE,       # Row 0 right, column 0 bottom: swapped about the other diagonal.
      8: t.ROTATE_90,        # Row 0 left, column 0 bottom: turn 90 degrees anticlockwise.
  }


def exif_upright(im, path: str, image=None):
  """`image` (default: `im`) transposed as the EXIF Orientation tag of `im` says.

  Phones and cameras store pixels as the sensor read them and record in the tag how to show
  them; OpenCV's imread and Hugging Face's loaders apply it, Pillow's `Image.open` does not.
  Every reader of user image files goes through here so that they agree.

  Args:
    im: the image as opened from the file `path` (Pillow), loaded: PNG keeps an eXIf chunk
      that follows the pixel data only once it is loaded. Its tag is read.
    path: the file, for the warning below.
    image: the Pillow image to turn, `[H, W]` pixels decoded from `im` (converted in mode or
      bit depth, not resized); `im` itself if None.

  Returns:
    `image` itself when there is nothing to do (no tag, value 1, or an invalid value, which
    OpenCV also shows as stored): no copy, since training decodes image folders every step.
    Else a transposed copy; for values 5-8 it is `[W, H]`.
    An EXIF block that cannot be parsed leaves the pixels as stored, with a warning naming
    the file: the pixels themselves decode fine and viewers show them, so refusing the file
    (and stopping a training run at it) would help no one.
  """
  image = im if image is None else image
  try:
    # Cheap without EXIF: a lookup in `im.info`. Pillow applies TIFF's orientation itself
    # when it loads the file and then drops the tag, so TIFFs are not turned twice. Pillow
    # also takes the tag from XMP (tiff:Orientation) when EXIF lacks it, as Hugging Face does.
    orientation = im.getexif().get(0x0112, 1)
  except Exception as e:  # pylint: disable=broad-except
    # Pillow's EXIF parser raises SyntaxError, struct.error and others on damaged blocks;
    # recorded as a warning, and the read goes on as OpenCV's does.
    warnings.warn(f'{path}: EXIF block unreadable ({type(e).__name__}: {e}); using the '
                  'pixels as stored, not turned.', stacklevel=2)
    return image
  if not isinstance(orientation, int) or not 2 <= orientation <= 8:
    return image
  return image.transpose(_upright_transposes()[orientation])


# Pillow keeps 16-bit grey samples as mode 'I;16*' (PNG, TIFF) or 'I' (PNG, PGM), and its
# convert() to 8-bit modes clips them at 255 instead of scaling, so a 16-bit image would read
# as nearly all white. They are scaled as OpenCV and scikit-image do: the high byte.
_SIXTEEN_BIT_MODES = ('I;16', 'I;16B', 'I;16L', 'I;16N')
_SIXTEEN_BIT_I_FORMATS = ('PNG', 'PPM')


def to_8_bit(im, path: str):
  """`im` itself if 8-bit, else an 8-bit 'L' image of its grey samples (see above).

  Raises `UserInputError` for 32-bit integer samples outside [0, 255] and for float samples
  that are not whole numbers in [0, 255]: their range is not known (float images may be
  [0, 1] or anything), so no scaling would be right.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if im.mode not in _SIXTEEN_BIT_MODES + ('I', 'F'):
    return im
  samples = np.asarray(im)
  if im.mode in _SIXTEEN_BIT_MODES or (im.mode == 'I' and im.format in _SIXTEEN_BIT_I_FORMATS):
    high_byte = np.clip(samples, 0, 65535).astype(np.uint16) >> 8
    return Image.fromarray(high_byte.astype(np.uint8), 'L')
  finite = np.isfinite(samples).all()
  if not finite or samples.min(initial=0) < 0 or samples.max(initial=0) > 255 or (
      im.mode == 'F' and not np.array_equal(samples, np.round(samples))):
    kind = 'float' if im.mode == 'F' else '32-bit integer'
    found = (f'in [{samples.min()}, {samples.max()}]' if finite else 'with NaN or inf')
    raise UserInputError(
        f'{path}: {kind} samples {found}; expected 8- or 16-bit images (or whole numbers in '
        '[0, 255]), since no scaling of these to 8 bits is known to be right. Convert it to '
        'an 8- or 16-bit PNG first.')
  return Image.fromarray(samples.astype(np.uint8), 'L')


def composite_alpha(image: np.ndarray, background: int) -> np.ndarray:
  """`[H, W, C + 1]` uint8 (LA or RGBA) -> `[H, W, C]` over a flat `background` grey level.

  What a viewer shows on a page of that grey: neither the models nor the pixel metrics know
  transparency, and the colour stored under a transparent pixel is arbitrary.
  """
  if not 0 <= int(background) <= 255:
    raise UserInputError(f'alpha background {background}: expected a grey level 0..255.')
  colour = image[..., :-1].astype(np.float32)
  alpha = image[..., -1:].astype(np.float32) / 255.0
  out = colour * alpha + float(background) * (1.0 - alpha)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def list_images(directory: str | os.PathLike,
                extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> list[str]:
  """Sorted image files directly inside `directory` (by extension, case-insensitive; other
  `extensions` list other files, e.g. ('.ganz',)).

  Hidden files are left out: macOS writes `._name.jpg` metadata files (AppleDouble) beside
  the images it copies to other file systems, and they are no images.
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    raise UserInputError(f'{directory}: not a directory of images.')
  return sorted(os.path.join(directory, f) for f in os.listdir(directory)
                if f.lower().endswith(extensions) and not f.startswith('.'))


def expand_inputs(inputs: list[str], extensions: tuple[str, ...] = IMAGE_EXTENSIONS, *,
                  kind: str = 'file') -> list[str]:
  """A command line's inputs: files as given, folders -> their files with `extensions`
  (sorted, not recursive). An empty folder, or a missing path ('no such {kind} or
  folder'), is a clear error."""
  paths = []
  for item in inputs:
    if os.path.isdir(item):
      found = list_images(item, extensions)
      if not found:
        subfolders = sorted(d.name for d in os.scandir(item)
                            if d.is_dir() and not d.name.startswith('.'))
        hint = (f'; it has sub-folders ({", ".join(subfolders[:5])}'
                f'{", ..." if len(subfolders) > 5 else ""}), which are not searched: pass them'
                if subfolders else '')
        raise UserInputError(f'{item}: folder holds no {"/".join(extensions)} files{hint}.')
      paths += found
    elif os.path.exists(item):
      paths.append(item)
    else:
      raise UserInputError(f'{item}: no such {kind} or folder.')
  return paths


def to_model_range(images_uint8) -> np.ndarray:
  """uint8 `[..., C]` in [0, 255] -> float32 in [-1, 1], the official ViT scaling."""
  return (np.asarray(images_uint8, np.float32) - 127.5) / 127.5
