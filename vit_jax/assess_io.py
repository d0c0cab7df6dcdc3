"""Inputs of the assessment report: image pairs by file name, checkpoint, compressed sizes.

Everything a user can get wrong is checked here, before any metric runs, with a message that
names the file: empty folders, originals without a reconstruction, different sizes (or
`--resize`), different channel counts, NaN in float images, unreadable files.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from vision_core import images as images_lib
from vision_core.errors import UserInputError
from vision_core.images import exif_upright, list_images

# What happens to each file mode (stated in the report).
COLOUR_NOTE = ('RGB images are used as stored (8 bits per channel, values 0-255). Grey images '
               '(L) stay one channel for SSIM/MSE/PSNR/BRISQUE and are repeated to 3 channels '
               'for the ViT. An alpha channel (RGBA, LA, transparent palette entries) is '
               'composited on a flat grey (--alpha-background, white by default, as the '
               'study does) in both images of a pair: they are scored as a viewer sees them '
               'on that page. Palette images are expanded to RGB. 16-bit grey images keep '
               'their 16-bit precision for SSIM, MSE, PSNR and the raw-pixel FIDs, on the '
               '0-255 scale (value / 257, so 65535 is 255); the ViT, BRISQUE and the ViT FID '
               'see their high byte, as every reader of the project does.')


@dataclasses.dataclass
class Pair:
  name: str
  original_path: str
  reconstruction_path: str
  original: np.ndarray          # [H, W, C] uint8, C in (1, 3)
  reconstruction: np.ndarray    # same shape
  notes: list[str]
  compressed_path: str | None = None
  # [H, W, C] float64 on the 0-255 scale when either file is 16-bit (finer than the uint8
  # arrays), for the pixel metrics; None otherwise.
  original_levels: np.ndarray | None = None
  reconstruction_levels: np.ndarray | None = None

  def pixels(self):
    """(original, reconstruction) at the finest precision both files have."""
    if self.original_levels is None:
      return self.original, self.reconstruction
    return self.original_levels, self.reconstruction_levels


def read_for_metrics(path: str, *, alpha_background: int = 255
                     ) -> tuple[np.ndarray, list[str]]:
  """An image file as `[H, W, C]` uint8 with C in (1, 3), and notes on what was changed.

  The EXIF orientation is applied, as in `vision_core.images.read_image`, so an original and
  its reconstruction are compared as viewers show them.
  """
  array, notes, _ = read_with_levels(path, alpha_background=alpha_background)
  return array, notes


def read_with_levels(path: str, *, alpha_background: int = 255
                     ) -> tuple[np.ndarray, list[str], np.ndarray | None]:
  """`read_for_metrics` plus, for 16-bit files, `[H, W, 1]` float64 levels on 0-255."""
  from PIL import Image, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  notes, levels = [], None
  try:
    with Image.open(path) as opened:
      opened.load()
      im = exif_upright(opened, path)  # Same mode, palette and info; only turned.
      mode = im.mode
      if mode == 'F':  # 32-bit float images (TIFF): check, then take them as 0-255 values.
        values = np.asarray(im, np.float32)
        if not np.isfinite(values).all():
          raise UserInputError(f'{path}: the image contains NaN or infinite values.')
        if values.min() < 0 or values.max() > 255:
          raise UserInputError(
              f'{path}: float image values span [{values.min()}, {values.max()}]; expected '
              '0-255.')
        return (np.round(values).astype(np.uint8)[..., None], ['float image rounded to 8 bits'],
                None)
      if mode in ('RGBA', 'LA', 'PA') or (mode == 'P' and 'transparency' in im.info):
        grey = mode == 'LA'
        array = images_lib.composite_alpha(np.asarray(im.convert('LA' if grey else 'RGBA')),
                                           alpha_background)
        notes.append(f'alpha composited on grey level {int(alpha_background)}')
      elif mode in ('L', '1'):
        array = np.asarray(im.convert('L'))[..., None]
      elif mode.startswith('I'):
        # The one rule of every reader (vision_core.images.to_8_bit): a 16-bit file keeps its
        # high byte, as OpenCV's imread and scikit-image's img_as_ubyte do, whatever its
        # values (a dark one is still 16-bit); a 32-bit integer image must hold 0-255.
        # (From the file as opened: to_8_bit reads its format, which a turned copy lacks.)
        eight_bit = images_lib.to_8_bit(opened, path)
        array = np.asarray(exif_upright(opened, path, eight_bit))[..., None]
        if eight_bit is not opened and (mode.startswith('I;16') or opened.format in ('PNG',
                                                                                   'PPM')):
          notes.append('16-bit: high byte for the ViT and BRISQUE')
          levels = np.clip(np.asarray(im, np.float64), 0, 65535)[..., None] / 257.0
      else:
        array = np.asarray(im.convert('RGB'))
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such image file.') from None
  # DecompressionBombError: more pixels than Pillow's guard allows (2 x MAX_IMAGE_PIXELS,
  # 179 M; a 200 MP phone photo has more); an Exception, not an OSError.
  except (UnidentifiedImageError, OSError, SyntaxError, ValueError,
          Image.DecompressionBombError) as e:
    raise UserInputError(f'{path}: not a readable image ({e}).') from None
  return np.ascontiguousarray(array, np.uint8), notes, levels


def _by_stem(directory: str, what: str) -> dict[str, str]:
  files = list_images(directory)
  if not files:
    raise UserInputError(f'{directory}: no images found in the {what} folder (looked for '
                         '.png, .jpg, .jpeg, .bmp, .gif, .tif, .tiff, .webp).')
  stems = {}
  for f in files:
    stem = os.path.splitext(os.path.basename(f))[0]
    if stem in stems:
      raise UserInputError(f'{directory}: two images share the name {stem!r} '
                           f'({os.path.basename(stems[stem])}, {os.path.basename(f)}).')
    stems[stem] = f
  return stems


def _resize_to(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bicubic (Pillow) resize of `[h, w, C]` uint8, or of `[h, w, 1]` float levels."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.dtype != np.uint8:  # 16-bit levels: Pillow's float mode, clipped as uint8 is.
    pil = Image.fromarray(image[..., 0].astype(np.float32), 'F')
    out = np.asarray(pil.resize((width, height), Image.BICUBIC), np.float64)
    return np.clip(out, 0.0, 255.0)[..., None]
  mode = 'L' if image.shape[-1] == 1 else 'RGB'
  pil = Image.fromarray(image[..., 0] if mode == 'L' else image, mode)
  out = np.asarray(pil.resize((width, height), Image.BICUBIC))
  return out[..., None] if out.ndim == 2 else out


def find_compressed(directory: str) -> dict[str, str]:
  if not os.path.isdir(directory):
    raise UserInputError(f'{directory}: the --compressed folder does not exist.')
  out = {}
  for f in sorted(os.listdir(directory)):
    path = os.path.join(directory, f)
    if os.path.isfile(path) and not f.startswith('.'):
      out.setdefault(os.path.splitext(f)[0], path)
  return out


def load_pairs(originals: str, reconstructions: str, *, resize: bool,
               compressed: str | None = None, alpha_background: int = 255
               ) -> tuple[list[Pair], list[str]]:
  """Pairs images by name (extension ignored) and checks them; returns (pairs, ignored)."""
  orig = _by_stem(originals, 'originals')
  recon = _by_stem(reconstructions, 'reconstructions')
  missing = sorted(set(orig) - set(recon))
  if missing:
    listed = ', '.join(os.path.basename(orig[m]) for m in missing[:10])
    raise UserInputError(
        f'{len(missing)} original(s) have no reconstruction with the same name in '
        f'{reconstructions}: {listed}{" ..." if len(missing) > 10 else ""}.')
  ignored = sorted(set(recon) - set(orig))
  comp = find_compressed(compressed) if compressed else {}
  pairs = []
  for stem in sorted(orig):
    a, notes_a, levels_a = read_with_levels(orig[stem], alpha_background=alpha_background)
    b, notes_b, levels_b = read_with_levels(recon[stem], alpha_background=alpha_background)
    notes = [f'original: {n}' for n in notes_a] + [f'reconstruction: {n}' for n in notes_b]
    if a.shape[-1] != b.shape[-1]:
      kinds = {1: 'grey', 3: 'colour'}
      raise UserInputError(
          f'{recon[stem]}: {kinds[b.shape[-1]]} ({b.shape[-1]} channel(s)) but its original '
          f'{orig[stem]} is {kinds[a.shape[-1]]} ({a.shape[-1]}); save both in the same colour '
          'mode.')
    if a.shape != b.shape:
      if not resize:
        raise UserInputError(
            f'{recon[stem]}: {b.shape[1]}x{b.shape[0]} pixels but its original {orig[stem]} is '
            f'{a.shape[1]}x{a.shape[0]}; pass --resize to resize reconstructions (bicubic) to '
            'the original size.')
      notes.append(f'reconstruction resized from {b.shape[1]}x{b.shape[0]} (bicubic)')
      if levels_b is not None:
        levels_b = _resize_to(levels_b, a.shape[0], a.shape[1])
      b = _resize_to(b, a.shape[0], a.shape[1])
    if min(a.shape[:2]) < 16:
      raise UserInputError(f'{orig[stem]}: {a.shape[1]}x{a.shape[0]} is too small; the '
                           'metrics need at least 16x16 pixels.')
    pair = Pair(stem, orig[stem], recon[stem], a, b, notes)
    if levels_a is not None or levels_b is not None:  # An 8-bit level v is 16-bit v * 257.
      pair.original_levels = a.astype(np.float64) if levels_a is None else levels_a
      pair.reconstruction_levels = b.astype(np.float64) if levels_b is None else levels_b
    if compressed:
      if stem not in comp:
        raise UserInputError(f'{compressed}: no compressed file named {stem}.* for '
                             f'{orig[stem]}.')
      pair.compressed_path = comp[stem]
    pairs.append(pair)
  return pairs, [recon[s] for s in ignored]
