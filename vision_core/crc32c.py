"""CRC-32C (Castagnoli) and its masked form, the checksums of TensorFlow's file formats.

TFRecord / TensorBoard event files (`vision_core.tfevents`) and the LevelDB tables of TF
checkpoints (`igpt_jax.tf_bundle`) store `mask(crc32c(bytes))`. Pure Python: fine for
records and index blocks; slow for gigabytes.
"""


def _table() -> list[int]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    table.append(c)
  return table


_TABLE = _table()


def crc32c(data: bytes) -> int:
  """CRC-32C of `data`; crc32c(b'123456789') == 0xE3069283 (the standard check value)."""
  crc = 0xFFFFFFFF
  table = _TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def mask(crc: int) -> int:
  """The stored form of a crc (LevelDB / TFRecord): rotated right by 15 bits plus a constant."""
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
