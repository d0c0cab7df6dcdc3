"""CRC-32C (Castagnoli) and its masked form, the checksums of TensorFlow's file formats.

TFRecord / TensorBoard event files (`vision_core.tfevents`) and TF checkpoints
(`igpt_jax.tf_bundle`: each tensor's bytes, and the index's blocks) store
`mask(crc32c(bytes))`.

google-crc32c's C code computes it (0.2 s per GiB: hardware CRC instructions) where its
compiled extension is installed (a dependency: wheels for the common platforms). Without it
(its pure-Python fallback is slower than ours), `crc32c_numpy`: short inputs through the
byte-at-a-time table loop (about 190 s per GiB in CPython); inputs of `_ROW_BYTES` or more
through numpy, about 2 s per GiB (bench/crc32c_bench.py): the data is read as rows
of `_LANES` little-endian 32-bit words, and lane k (word k of every row) is one interleaved
stream whose CRC register advances a row at a time, by two lookups in 65536-entry tables per
word. CRC is linear over GF(2), so the lanes' registers then fold into the CRC of the whole.
"""

from __future__ import annotations

import functools

import numpy as np

try:
  import google_crc32c as _google  # pylint: disable=g-import-not-at-top
  if _google.implementation != 'c':
    _google = None
except ImportError:
  _google = None

_POLYNOMIAL = 0x82F63B78  # Castagnoli's, bit-reversed (the CRC is computed LSB first).
_LANES = 16384
_ROW_BYTES = 4 * _LANES
# google-crc32c takes `bytes` only: other buffers are copied in pieces of this size.
_COPY_BYTES = 64 << 20


def _table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ _POLYNOMIAL if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
  """CRC-32C of `data` (any bytes-like object); crc32c(b'123456789') == 0xE3069283 (the
  standard check value)."""
  if _google is None:
    return crc32c_numpy(data)
  if isinstance(data, bytes):
    return _google.value(data)
  view = memoryview(data).cast('B')
  checksum = _google.Checksum()
  for start in range(0, len(view), _COPY_BYTES):
    checksum.update(bytes(view[start:start + _COPY_BYTES]))
  return int.from_bytes(checksum.digest(), 'big')


def crc32c_numpy(data: bytes) -> int:
  """`crc32c` without google-crc32c: the table loop, or numpy's lanes for long inputs."""
  data = memoryview(data).cast('B')
  if len(data) >= _ROW_BYTES:
    return _crc32c_lanes(data)
  crc = 0xFFFFFFFF
  table = _TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def mask(crc: int) -> int:
  """The stored form of a crc (LevelDB / TFRecord): rotated right by 15 bits plus a constant."""
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- Linear maps of the 32-bit register, each as the images of its 32 bits. ---

def _apply(columns: list[int], register: int) -> int:
  out, bit = 0, 0
  while register:
    if register & 1:
      out ^= columns[bit]
    register >>= 1
    bit += 1
  return out


def _square(columns: list[int]) -> list[int]:
  return [_apply(columns, c) for c in columns]


@functools.cache
def _zero_byte_maps() -> list[list[int]]:
  """The maps that feed 4, 8, 16, ..., 4 * _LANES zero bytes into the register."""
  one_byte = [_TABLE[(1 << i) & 0xFF] ^ ((1 << i) >> 8) for i in range(32)]
  maps = [_square(_square(one_byte))]
  while len(maps) <= _LANES.bit_length() - 1:
    maps.append(_square(maps[-1]))
  return maps


def _lookup_tables(columns: list[int], bits: int) -> np.ndarray:
  """[32 // bits, 2**bits] tables: row j maps bits j*bits... of the register to its image."""
  values = np.arange(1 << bits, dtype=np.uint32)
  tables = np.zeros((32 // bits, 1 << bits), np.uint32)
  for i, image in enumerate(columns):
    tables[i // bits] ^= np.where((values >> (i % bits)) & 1, np.uint32(image), np.uint32(0))
  return tables


@functools.cache
def _row_tables() -> np.ndarray:
  return _lookup_tables(_zero_byte_maps()[-1], 16)  # A row: 4 * _LANES bytes.


@functools.cache
def _fold_tables() -> list[np.ndarray]:
  return [_lookup_tables(columns, 8) for columns in _zero_byte_maps()[:-1]]


def _apply_bytewise(tables: np.ndarray, registers: np.ndarray) -> np.ndarray:
  return (tables[0][registers & 0xFF] ^ tables[1][(registers >> 8) & 0xFF]
          ^ tables[2][(registers >> 16) & 0xFF] ^ tables[3][registers >> 24])


def _crc32c_lanes(data: memoryview) -> int:
  """CRC-32C of `_ROW_BYTES` or more bytes, a row of `_LANES` words at a time."""
  # The bytes short of whole rows go first, right-aligned in rows of their own after zeros
  # (zero bytes leave a zero register as it is). The register's initial all-ones is fed in
  # by flipping the message's first 4 bytes, so the first front row takes 4 bytes or more.
  front = len(data) % _ROW_BYTES
  front += _ROW_BYTES if front < 4 else 0
  padded = np.zeros(-(-front // _ROW_BYTES) * _ROW_BYTES, np.uint8)
  start = len(padded) - front
  padded[start:] = np.frombuffer(data[:front], np.uint8)
  padded[start:start + 4] ^= 0xFF
  rows = [padded.view('<u4').reshape(-1, _LANES),
          np.frombuffer(data[front:], '<u4').reshape(-1, _LANES)]
  low, high = _row_tables()
  # Lane k after the last row: the XOR, over rows r, of word k of row r advanced by the
  # zero bytes of the rows after r (Horner's rule).
  registers = np.zeros(_LANES, np.uint32)
  for block in rows:
    for words in block:
      registers = low[registers & 0xFFFF] ^ high[registers >> 16] ^ words
  # Word k of a row is followed by 4 * (_LANES - k) bytes of its row: fold neighbouring lanes
  # pairwise (the left one advanced past the right one's bytes), then advance 4 bytes.
  fold = _fold_tables()
  for tables in fold:
    registers = _apply_bytewise(tables, registers[0::2]) ^ registers[1::2]
  return int(_apply_bytewise(fold[0], registers)[0]) ^ 0xFFFFFFFF
