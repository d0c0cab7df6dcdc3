"""A reader for TensorFlow's checkpoint format (the "tensor bundle"), without TensorFlow.

A checkpoint `PREFIX` is `PREFIX.index`, an SSTable (LevelDB table) mapping each tensor name
to a `BundleEntryProto` (dtype, shape, shard_id, offset, size, masked crc32c), with the empty
key holding a `BundleHeaderProto` (num_shards, endianness), and the data files
`PREFIX.data-{shard:05d}-of-{num_shards:05d}` holding raw little-endian tensor bytes.
OpenAI's Image GPT checkpoints are such bundles (32 or 64 shards). Reading them ourselves
keeps TensorFlow (a ~1.6 GB install) out of the project and out of CI.
"""

from __future__ import annotations

import os
import struct
from typing import Iterator

import numpy as np

from vision_core import crc32c as _crc
from vision_core.errors import UserInputError

TABLE_MAGIC = 0xdb4775248b80fb57
FOOTER_SIZE = 48  # Two block handles padded to 40 bytes, then the 8-byte magic.
BLOCK_TRAILER_SIZE = 5  # Compression type byte + masked crc32c.

# tensorflow/core/framework/types.proto -> numpy (little-endian).
DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8,
          9: np.int64, 10: np.bool_, 17: np.uint16, 19: np.float16, 22: np.uint32,
          23: np.uint64}
DT_BFLOAT16 = 14


# Re-exported: the tests and callers name them through this module.
crc32c = _crc.crc32c
mask_crc = _crc.mask


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
  """Decodes a protobuf/LevelDB varint at `pos`: (value, position after it)."""
  result = shift = 0
  while True:
    if pos >= len(data):
      raise ValueError('truncated varint')
    byte = data[pos]
    pos += 1
    result |= (byte & 0x7f) << shift
    if not byte & 0x80:
      return result, pos
    shift += 7


def parse_proto(data: bytes) -> dict[int, list]:
  """Protobuf wire format -> {field number: [values]} (ints, or bytes for nested/strings)."""
  fields: dict[int, list] = {}
  pos = 0
  while pos < len(data):
    key, pos = read_varint(data, pos)
    field, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = read_varint(data, pos)
    elif wire == 1:
      value, pos = struct.unpack_from('<Q', data, pos)[0], pos + 8
    elif wire == 2:
      n, pos = read_varint(data, pos)
      value, pos = data[pos:pos + n], pos + n
    elif wire == 5:
      value, pos = struct.unpack_from('<I', data, pos)[0], pos + 4
    else:
      raise ValueError(f'unsupported protobuf wire type {wire}')
    fields.setdefault(field, []).append(value)
  return fields


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
  """Key/value pairs of one SSTable block (prefix-compressed keys, restart array at end)."""
  (num_restarts,) = struct.unpack_from('<I', block, len(block) - 4)
  end = len(block) - 4 - 4 * num_restarts
  pos, key = 0, b''
  while pos < end:
    shared, pos = read_varint(block, pos)
    non_shared, pos = read_varint(block, pos)
    value_len, pos = read_varint(block, pos)
    key = key[:shared] + block[pos:pos + non_shared]
    pos += non_shared
    yield key, block[pos:pos + value_len]
    pos += value_len


def _read_block(data: bytes, handle: bytes, path: str) -> bytes:
  offset, pos = read_varint(handle, 0)
  size, _ = read_varint(handle, pos)
  if offset + size + BLOCK_TRAILER_SIZE > len(data):
    raise UserInputError(f'{path}: truncated (a block at byte {offset} runs past the end).')
  block = data[offset:offset + size]
  kind = data[offset + size]
  (stored,) = struct.unpack_from('<I', data, offset + size + 1)
  if mask_crc(crc32c(block + bytes([kind]))) != stored:
    raise UserInputError(f'{path}: corrupt (checksum mismatch in the block at byte {offset}).')
  if kind != 0:
    raise UserInputError(f'{path}: block at byte {offset} is compressed (type {kind}); '
                         'TensorFlow writes checkpoint indexes uncompressed, this is not one.')
  return block


def read_table(path: str) -> dict[bytes, bytes]:
  """All key/value pairs of an SSTable file (a checkpoint's `.index`)."""
  with open(path, 'rb') as f:
    data = f.read()
  if len(data) < FOOTER_SIZE:
    raise UserInputError(f'{path}: {len(data)} bytes is too short for a checkpoint index.')
  (magic,) = struct.unpack_from('<Q', data, len(data) - 8)
  if magic != TABLE_MAGIC:
    raise UserInputError(f'{path}: not a TensorFlow checkpoint index (no SSTable magic '
                         'number at the end of the file).')
  footer = data[len(data) - FOOTER_SIZE:]
  _, pos = read_varint(footer, 0)  # The metaindex handle (unused: no filters in bundles).
  _, pos = read_varint(footer, pos)
  index = _read_block(data, footer[pos:], path)
  table = {}
  for _, handle in _block_entries(index):
    table.update(_block_entries(_read_block(data, handle, path)))
  return table


def resolve_prefix(path: str | os.PathLike) -> str:
  """`PREFIX`, `PREFIX.index` or a directory (with a `checkpoint` file or one index) -> PREFIX."""
  path = os.fspath(path)
  if path.endswith('.index'):
    path = path[:-len('.index')]
  if os.path.isdir(path):
    state = os.path.join(path, 'checkpoint')
    if os.path.exists(state):
      with open(state, encoding='utf-8') as f:
        for line in f:
          if line.startswith('model_checkpoint_path:'):
            name = line.split(':', 1)[1].strip().strip('"')
            return name if os.path.isabs(name) else os.path.join(path, name)
    indexes = sorted(n for n in os.listdir(path) if n.endswith('.index'))
    if len(indexes) != 1:
      raise UserInputError(f'{path}: expected one TensorFlow checkpoint (*.index) in the '
                           f'directory, found {len(indexes)}; pass the checkpoint prefix.')
    return os.path.join(path, indexes[0][:-len('.index')])
  if not os.path.exists(path + '.index'):
    raise FileNotFoundError(f'{path}.index: no such TensorFlow checkpoint index.')
  return path


def _shape(entry: dict, name: str, path: str) -> tuple[int, ...]:
  shape_proto = parse_proto(entry.get(2, [b''])[0])
  if shape_proto.get(3, [0])[0]:
    raise UserInputError(f'{path}: tensor {name!r} has an unknown rank.')
  return tuple(parse_proto(dim).get(1, [0])[0] for dim in shape_proto.get(2, []))


def read_bundle(path: str | os.PathLike, *, skip=lambda name: False,
                verify_checksums: bool = True) -> dict[str, np.ndarray]:
  """Reads every tensor of a TF checkpoint whose name `skip(name)` does not reject.

  Args:
    path: the checkpoint prefix (`.../model.ckpt-1000000`), its `.index`, or a directory.
    skip: names to leave unread (optimizer slots: reading them would triple the I/O).
    verify_checksums: check each tensor's crc32c, as TensorFlow does (`vision_core.crc32c`:
      0.2 s per GiB with google-crc32c, 2 s without); False skips it. Sizes and the index's
      block checksums are always checked.

  Returns:
    `{name: array}` in the stored dtype and shape.
  """
  prefix = resolve_prefix(path)
  index_path = prefix + '.index'
  table = read_table(index_path)
  if b'' not in table:
    raise UserInputError(f'{index_path}: no bundle header (is this a TF2 object-graph or '
                         'TF1 V1 checkpoint? Only V2 tensor bundles are read).')
  header = parse_proto(table[b''])
  num_shards = header.get(1, [1])[0]
  if header.get(2, [0])[0] != 0:
    raise UserInputError(f'{index_path}: big-endian checkpoints are not supported.')
  arrays, files = {}, {}
  try:
    for key in sorted(k for k in table if k):
      name = key.decode('utf-8')
      if skip(name):
        continue
      entry = parse_proto(table[key])
      dtype_id = entry.get(1, [0])[0]
      if entry.get(7):
        raise UserInputError(f'{index_path}: tensor {name!r} is stored in slices '
                             '(a partitioned variable), which is not supported.')
      if dtype_id not in DTYPES and dtype_id != DT_BFLOAT16:
        raise UserInputError(f'{index_path}: tensor {name!r} has TF dtype {dtype_id}, '
                             'not a numeric type this reader knows.')
      shape = _shape(entry, name, index_path)
      shard, offset, size = (entry.get(f, [0])[0] for f in (3, 4, 5))
      data_path = f'{prefix}.data-{shard:05d}-of-{num_shards:05d}'
      if data_path not in files:
        if not os.path.exists(data_path):
          raise FileNotFoundError(f'{data_path}: missing data shard {shard} of {num_shards} '
                                  f'(needed for {name!r}).')
        files[data_path] = open(data_path, 'rb')  # pylint: disable=consider-using-with
      f = files[data_path]
      f.seek(offset)
      raw = f.read(size)
      itemsize = 2 if dtype_id == DT_BFLOAT16 else np.dtype(DTYPES[dtype_id]).itemsize
      if len(raw) != size or size != itemsize * int(np.prod(shape)):
        raise UserInputError(
            f'{data_path}: tensor {name!r} of shape {shape} needs '
            f'{itemsize * int(np.prod(shape))} bytes at offset {offset}, found {len(raw)} '
            '(truncated file or mismatched index).')
      if verify_checksums and mask_crc(crc32c(raw)) != entry.get(6, [0])[0]:
        raise UserInputError(f'{data_path}: tensor {name!r} fails its crc32c checksum (bytes '
                             f'{offset} to {offset + size}): the file is damaged, or does not '
                             'belong to this index.')
      if dtype_id == DT_BFLOAT16:  # The top half of a float32.
        bits = np.frombuffer(raw, '<u2').astype(np.uint32) << 16
        arrays[name] = bits.view(np.float32).reshape(shape)
      else:
        arrays[name] = np.frombuffer(raw, np.dtype(DTYPES[dtype_id]).newbyteorder('<')
                                     ).reshape(shape).copy()
  finally:
    for f in files.values():
      f.close()
  return arrays
