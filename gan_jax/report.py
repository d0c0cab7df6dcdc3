"""Rates and quality of compressed images, and the JPEG baseline at the same size.

Bits per pixel are counted per pixel of the image the generator reconstructs (its S x S
grid); the ratio is given against the user's input file and against the raw pixel bytes
(H * W * C of the input image). The baseline is what a user would otherwise do: Pillow's
JPEG at the highest quality whose file is no larger than ours (if even quality 1 is
larger, the row says so and gives that smallest JPEG).
"""

from __future__ import annotations

import io as _io

import numpy as np


def psnr(a_uint8, b_uint8) -> float:
  """PSNR in dB between two uint8 images (peak 255); inf when identical."""
  mse = np.mean((np.asarray(a_uint8, np.float64) - np.asarray(b_uint8, np.float64)) ** 2)
  return float('inf') if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def to_uint8(images) -> np.ndarray:
  """Generator output in [-1, 1] -> uint8 [0, 255] (rounded, clipped)."""
  return np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(
      np.uint8)


def jpeg_bytes(image_uint8, quality: int) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.asarray(image_uint8)
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  buffer = _io.BytesIO()
  pil.save(buffer, format='JPEG', quality=int(quality))
  return buffer.getvalue()


def decode_jpeg(data: bytes, channels: int) -> np.ndarray:
  # `data` is our own baseline from `jpeg_bytes`, never a user's file: it has no EXIF block,
  # so there is no orientation to apply.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with Image.open(_io.BytesIO(data)) as im:
    array = np.asarray(im.convert('L' if channels == 1 else 'RGB'))
  return array[..., None] if array.ndim == 2 else array


def jpeg_at_size(image_uint8, max_bytes: int) -> dict:
  """Highest-quality JPEG (1..95, bisection) no larger than `max_bytes`."""
  lo, hi, best = 1, 95, None
  while lo <= hi:
    mid = (lo + hi) // 2
    data = jpeg_bytes(image_uint8, mid)
    if len(data) <= max_bytes:
      best, lo = (mid, data), mid + 1
    else:
      hi = mid - 1
  fits = best is not None
  quality, data = best if fits else (1, jpeg_bytes(image_uint8, 1))
  decoded = decode_jpeg(data, np.shape(image_uint8)[-1])
  return {'jpeg_quality': quality, 'jpeg_bytes': len(data), 'jpeg_fits': fits,
          'jpeg_psnr': psnr(decoded, image_uint8)}


def rate_row(*, compressed_bytes: int, target_uint8, reconstruction_uint8,
             input_file_bytes: int | None, input_shape) -> dict:
  """One image's numbers: sizes, ratios, bpp, PSNR, and the JPEG row at the same size."""
  s_h, s_w = np.shape(target_uint8)[:2]
  raw = int(np.prod(input_shape))
  row = {'bytes': compressed_bytes, 'bpp': 8.0 * compressed_bytes / (s_h * s_w),
         'ratio_vs_raw_pixels': raw / compressed_bytes,
         'ratio_vs_input_file': (input_file_bytes / compressed_bytes
                                 if input_file_bytes else None),
         'psnr': psnr(reconstruction_uint8, target_uint8)}
  row.update(jpeg_at_size(target_uint8, compressed_bytes))
  row['jpeg_bpp'] = 8.0 * row['jpeg_bytes'] / (s_h * s_w)
  return row
