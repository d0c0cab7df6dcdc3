"""vision_core.crc32c: ours (the numpy path for long inputs) and the one it uses (google-crc32c
where installed) against an independent implementation."""

import os

import numpy as np
import pytest

from vision_core import crc32c

# TensorBoard's pure-Python CRC-32C (its TensorFlow stand-in), written apart from ours.
reference = pytest.importorskip('tensorboard.compat.tensorflow_stub.pywrap_tensorflow')

ROW = crc32c._ROW_BYTES  # pylint: disable=protected-access
# Ours, and what `crc32c.crc32c` computes with (google-crc32c's C code where installed).
IMPLEMENTATIONS = [crc32c.crc32c_numpy, crc32c.crc32c]


@pytest.mark.parametrize('crc', IMPLEMENTATIONS)
def test_check_value(crc):
  assert crc(b'123456789') == 0xE3069283
  assert crc(b'') == 0


@pytest.mark.parametrize('crc', IMPLEMENTATIONS)
@pytest.mark.parametrize('size', [ROW - 1, ROW, ROW + 1, ROW + 3, ROW + 4, ROW + 5, 2 * ROW - 1,
                                  3 * ROW + 777])
def test_long_inputs_match_the_reference(crc, size):
  """Lengths around whole rows: the numpy path pads the bytes short of a row, and feeds the
  register's initial value into the first 4 bytes, which straddle two rows below ROW + 4."""
  data = os.urandom(size)
  assert crc(data) == reference.crc32c(data) & 0xFFFFFFFF
  assert crc(memoryview(data)[1:]) == reference.crc32c(data[1:]) & 0xFFFFFFFF


@pytest.mark.parametrize('crc', IMPLEMENTATIONS)
def test_zeros_and_ones(crc):
  """Structured inputs, in case random bytes hid a lane that is never folded in."""
  for data in (bytes(2 * ROW + 6), b'\xff' * (2 * ROW + 6), bytes(ROW) + b'\x01'):
    assert crc(data) == reference.crc32c(data) & 0xFFFFFFFF


def test_buffers_longer_than_one_copy_and_of_other_types(monkeypatch):
  """google-crc32c takes `bytes` only: other buffers go to it a piece at a time."""
  monkeypatch.setattr(crc32c, '_COPY_BYTES', 1000)
  data = os.urandom(4320)
  for buffer in (data, bytearray(data), memoryview(data)[7:],
                 np.frombuffer(data, np.float32).reshape(40, 27)):
    assert crc32c.crc32c(buffer) == reference.crc32c(bytes(buffer)) & 0xFFFFFFFF


def test_the_c_implementation_is_used_where_installed():
  google_crc32c = pytest.importorskip('google_crc32c')  # a dependency: installed with us
  if google_crc32c.implementation == 'c':
    assert crc32c._google is google_crc32c  # pylint: disable=protected-access
