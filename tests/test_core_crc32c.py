"""vision_core.crc32c: the numpy path for long inputs against an independent implementation."""

import os

import pytest

from vision_core import crc32c

# TensorBoard's pure-Python CRC-32C (its TensorFlow stand-in), written apart from ours.
reference = pytest.importorskip('tensorboard.compat.tensorflow_stub.pywrap_tensorflow')

ROW = crc32c._ROW_BYTES  # pylint: disable=protected-access


def test_check_value():
  assert crc32c.crc32c(b'123456789') == 0xE3069283
  assert crc32c.crc32c(b'') == 0


@pytest.mark.parametrize('size', [ROW - 1, ROW, ROW + 1, ROW + 3, ROW + 4, ROW + 5, 2 * ROW - 1,
                                  3 * ROW + 777])
def test_long_inputs_match_the_reference(size):
  """Lengths around whole rows: the numpy path pads the bytes short of a row, and feeds the
  register's initial value into the first 4 bytes, which straddle two rows below ROW + 4."""
  data = os.urandom(size)
  assert crc32c.crc32c(data) == reference.crc32c(data) & 0xFFFFFFFF
  assert crc32c.crc32c(memoryview(data)[1:]) == reference.crc32c(data[1:]) & 0xFFFFFFFF


def test_zeros_and_ones():
  """Structured inputs, in case random bytes hid a lane that is never folded in."""
  for data in (bytes(2 * ROW + 6), b'\xff' * (2 * ROW + 6), bytes(ROW) + b'\x01'):
    assert crc32c.crc32c(data) == reference.crc32c(data) & 0xFFFFFFFF

