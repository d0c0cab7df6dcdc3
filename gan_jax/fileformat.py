"""The compressed-image file: a small versioned binary container for one GAN latent.

Layout (little-endian), version 1:

  offset  size  field
  0       4     magic b'GANZ'
  4       1     format version (1)
  5       1     quantisation: 0 float32, 1 float16, 2 k-bit uniform
  6       1     bits per latent value (32, 16, or k in 1..16)
  7       1     latent ndim (n)
  8       16    generator identity: first 16 bytes of its SHA-256 (weights + config)
  24      4     original image height, width (uint16 each)
  28      4n    latent shape (uint32 each)
  ..      8     k-bit only: lo (float32), step (float32); value = lo + q * step
  ..      ...   payload: float32 / float16 values, or q packed k bits each (LSB first)
  end-4   4     CRC32 of every byte before it

A latent of 100 values at 8 bits is 44 + 100 = 144 bytes. Decoding checks, in order:
magic, version, length against the header, CRC32, and (in `gan_jax.decompress`) that the
generator at hand has the identity recorded here.
"""

from __future__ import annotations

import dataclasses
import os
import re
import struct
import zlib

import numpy as np

from vision_core import io
from vision_core.errors import UserInputError

MAGIC = b'GANZ'
VERSION = 1
_HEAD = struct.Struct('<4sBBBB16sHH')
_FLOAT32, _FLOAT16, _UNIFORM = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class Quantization:
  """'float32', 'float16' or 'Kbit' (uniform over [min, max] of the latent, K in 1..16)."""
  kind: int
  bits: int

  @classmethod
  def parse(cls, spec: str) -> 'Quantization':
    spec = str(spec).lower()
    if spec == 'float32':
      return cls(_FLOAT32, 32)
    if spec == 'float16':
      return cls(_FLOAT16, 16)
    match = re.fullmatch(r'(\d+)-?bits?', spec)
    if match and 1 <= int(match.group(1)) <= 16:
      return cls(_UNIFORM, int(match.group(1)))
    raise UserInputError(f'quantization {spec!r}: expected float32, float16 or Kbit with '
                         'K in 1..16 (e.g. 8bit).')

  def __str__(self) -> str:
    return {_FLOAT32: 'float32', _FLOAT16: 'float16'}.get(self.kind, f'{self.bits}bit')


@dataclasses.dataclass(frozen=True)
class Compressed:
  """A decoded file: the latent as the decoder will use it (dequantised, float32)."""
  latent: np.ndarray
  generator_id: bytes
  image_size: tuple[int, int]
  quantization: Quantization


def _uniform(latent: np.ndarray, bits: int):
  lo, hi = float(latent.min()), float(latent.max())
  step = np.float32((hi - lo) / (2 ** bits - 1)) if hi > lo else np.float32(1.0)
  q = np.clip(np.round((latent - np.float32(lo)) / step), 0, 2 ** bits - 1).astype(np.uint32)
  return np.float32(lo), step, q


def roundtrip(latent, quantization: str | Quantization) -> np.ndarray:
  """The latent exactly as a decoder of the file will see it, float32."""
  quant = quantization if isinstance(quantization, Quantization) else \
      Quantization.parse(quantization)
  latent = np.asarray(latent, np.float32)
  if quant.kind == _FLOAT32:
    return latent.copy()
  if quant.kind == _FLOAT16:
    return latent.astype(np.float16).astype(np.float32)
  lo, step, q = _uniform(latent, quant.bits)
  return (lo + q.astype(np.float32) * step).astype(np.float32)


def encode(latent, *, generator_id: str | bytes, quantization: str | Quantization,
           image_size: tuple[int, int]) -> bytes:
  """One latent (any shape) -> file bytes. `generator_id`: hex digest or raw bytes."""
  quant = quantization if isinstance(quantization, Quantization) else \
      Quantization.parse(quantization)
  raw = np.asarray(latent)
  if not raw.size or not (np.issubdtype(raw.dtype, np.floating)
                          or np.issubdtype(raw.dtype, np.integer)):
    raise UserInputError(f'latent: expected a non-empty array of real numbers, got '
                         f'{raw.dtype} {raw.shape}.')
  latent = raw.astype(np.float32)
  if not np.all(np.isfinite(latent)):
    raise UserInputError('latent has NaN or infinite values; refusing to write it.')
  try:
    gid = bytes.fromhex(generator_id) if isinstance(generator_id, str) else bytes(generator_id)
  except (ValueError, TypeError):
    gid = b''
  if len(gid) < 16:
    raise UserInputError(f'generator_id {generator_id!r}: expected a SHA-256 hex digest (or at '
                         'least 16 raw bytes).')
  if quant.kind == _FLOAT16 and np.abs(latent).max(initial=0) > np.finfo(np.float16).max:
    raise UserInputError(f'latent values up to {np.abs(latent).max():.4g} do not fit float16 '
                         f'(max {float(np.finfo(np.float16).max):g}); use float32 or Kbit.')
  if quant.kind == _UNIFORM and latent.size and (
      float(latent.max()) - float(latent.min()) > float(np.finfo(np.float32).max)):
    raise UserInputError(f'latent range [{latent.min():.4g}, {latent.max():.4g}] is too wide '
                         f'for {quant} quantisation in float32; use float32.')
  if (not isinstance(image_size, (tuple, list)) or len(image_size) != 2
      or not all(isinstance(s, (int, np.integer)) for s in image_size)):
    raise UserInputError(f'image size {image_size!r}: expected (height, width) in pixels.')
  h, w = image_size
  if not (0 < h < 65536 and 0 < w < 65536):
    raise UserInputError(f'image size {image_size}: each side must be in 1..65535.')
  parts = [_HEAD.pack(MAGIC, VERSION, quant.kind, quant.bits, latent.ndim, gid[:16], h, w),
           struct.pack(f'<{latent.ndim}I', *latent.shape)]
  flat = latent.reshape(-1)
  if quant.kind == _FLOAT32:
    parts.append(flat.astype('<f4').tobytes())
  elif quant.kind == _FLOAT16:
    parts.append(flat.astype('<f2').tobytes())
  else:
    lo, step, q = _uniform(flat, quant.bits)
    bits = (q[:, None] >> np.arange(quant.bits, dtype=np.uint32)) & 1
    parts += [struct.pack('<ff', lo, step),
              np.packbits(bits.astype(np.uint8).reshape(-1), bitorder='little').tobytes()]
  body = b''.join(parts)
  return body + struct.pack('<I', zlib.crc32(body))


def _payload_bytes(quant: Quantization, count: int) -> int:
  if quant.kind == _UNIFORM:
    return 8 + (count * quant.bits + 7) // 8
  return count * quant.bits // 8


def decode(data: bytes, *, source: str = '<bytes>') -> Compressed:
  """File bytes -> `Compressed`; a clear `UserInputError` naming `source` on any defect."""
  if not isinstance(data, (bytes, bytearray, memoryview)):
    raise UserInputError(f'decode: expected the file\'s bytes, got a {type(data).__name__}'
                         f'{"; read(path) reads a file" if isinstance(data, str) else ""}.')
  if len(data) < 4 or data[:4] != MAGIC:
    raise UserInputError(f'{source}: not a gan_jax compressed file (magic bytes '
                         f'{bytes(data[:4])!r}, expected {MAGIC!r}).')
  if len(data) < _HEAD.size + 4:
    raise UserInputError(f'{source}: truncated: {len(data)} bytes, shorter than the '
                         f'{_HEAD.size + 4}-byte header.')
  _, version, kind, bits, ndim, gid, h, w = _HEAD.unpack_from(data)
  if version != VERSION:
    # A damaged version byte must not read as "get another gan_jax": every version so far
    # ends with the CRC32 of the rest, so a mismatch there points at damage instead.
    damaged = zlib.crc32(data[:-4]) != struct.unpack_from('<I', data, len(data) - 4)[0]
    raise UserInputError(
        f'{source}: format version {version}; this gan_jax reads version {VERSION}' +
        ('. Its CRC32 does not match either: the file is more likely damaged.' if damaged
         else '.'))
  try:
    quant = Quantization.parse({_FLOAT32: 'float32', _FLOAT16: 'float16'}.get(kind,
                                                                            f'{bits}bit'))
    if quant.kind != kind or quant.bits != bits:
      raise UserInputError('mismatch')
  except UserInputError:
    raise UserInputError(f'{source}: unknown quantisation (kind {kind}, {bits} bits) in '
                         'the header: corrupt file.') from None
  shape_end = _HEAD.size + 4 * ndim
  if len(data) < shape_end + 4:
    raise UserInputError(f'{source}: truncated inside the header ({len(data)} bytes).')
  shape = struct.unpack_from(f'<{ndim}I', data, _HEAD.size)
  count = int(np.prod(shape, dtype=np.int64))
  expected = shape_end + _payload_bytes(quant, count) + 4
  crc_ok = len(data) >= 4 and zlib.crc32(data[:-4]) == struct.unpack_from(
      '<I', data, len(data) - 4)[0]
  if len(data) != expected:
    what = 'truncated' if len(data) < expected else 'has trailing bytes'
    raise UserInputError(
        f'{source}: {what} or corrupt: its header promises {expected} bytes (latent '
        f'{shape}, {quant}), the file has {len(data)}'
        f'{"" if crc_ok else ", and its CRC32 does not match"}.')
  if not crc_ok:
    stored_crc, = struct.unpack_from('<I', data, len(data) - 4)
    raise UserInputError(f'{source}: corrupt: CRC32 mismatch (stored {stored_crc:08x}, '
                         f'computed {zlib.crc32(data[:-4]):08x}); the file was damaged.')
  payload = data[shape_end:-4]
  if quant.kind == _FLOAT32:
    latent = np.frombuffer(payload, '<f4').astype(np.float32)
  elif quant.kind == _FLOAT16:
    latent = np.frombuffer(payload, '<f2').astype(np.float32)
  else:
    lo, step = struct.unpack_from('<ff', payload)
    bits_arr = np.unpackbits(np.frombuffer(payload[8:], np.uint8), bitorder='little')
    bits_arr = bits_arr[:count * quant.bits].reshape(count, quant.bits).astype(np.uint32)
    q = (bits_arr << np.arange(quant.bits, dtype=np.uint32)).sum(axis=1)
    latent = (np.float32(lo) + q.astype(np.float32) * np.float32(step)).astype(np.float32)
  if not np.all(np.isfinite(latent)):
    raise UserInputError(f'{source}: corrupt: the latent has NaN or infinite values.')
  if not (h and w):  # encode writes 1..65535: a 0 here was written by something else
    raise UserInputError(f'{source}: corrupt: image size {h}x{w} in the header; encode '
                         'writes sides of at least 1 pixel.')
  return Compressed(latent.reshape(shape), gid, (h, w), quant)


def write(path: str | os.PathLike, data: bytes, *, overwrite: bool = False) -> None:
  """Writes file bytes atomically; refuses to replace an existing file unless asked."""
  with io.atomic_write(path, 'wb', overwrite=overwrite) as f:
    f.write(data)


def read(path: str | os.PathLike) -> Compressed:
  path = os.fspath(path)
  if os.path.isdir(path):  # "no such file" would be untrue, and open() says less.
    raise UserInputError(f'{path} is a folder; expected a compressed .ganz file (give the '
                         f'files in it, e.g. {os.path.join(path, "*.ganz")}).')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such compressed file.')
  with open(path, 'rb') as f:
    return decode(f.read(), source=path)
