"""TensorBoard event files of scalar summaries, written without TensorFlow or tensorboardX.

The format is small and stable: a file `events.out.tfevents.{time}.{host}` of records
`[uint64 length][uint32 masked crc32c(length)][Event proto][uint32 masked crc32c(data)]`,
the first Event holding `file_version = "brain.Event:2"`. We encode the few protobuf fields
we need by hand (Event.wall_time=1 double, step=2 int64, file_version=3 string, summary=5,
session_log=7; Summary.value=1; Value.tag=1 string, simple_value=2 float; SessionLog.status=1):
no dependency for 60 lines.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from typing import Mapping

from vision_core import crc32c as _crc
from vision_core import io


crc32c = _crc.crc32c


def _masked_crc(data: bytes) -> int:
  return _crc.mask(_crc.crc32c(data))


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # int64 two's complement, as protobuf encodes negatives.
  out = bytearray()
  while True:
    byte, value = value & 0x7F, value >> 7
    out.append(byte | (0x80 if value else 0))
    if not value:
      return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
  """A length-delimited field (wire type 2)."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


_SESSION_START = 1  # SessionLog.SessionStatus.START


def encode_event(*, wall_time: float, step: int = 0, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None,
                 session_start: bool = False) -> bytes:
  """The serialised `tensorflow.Event` protobuf."""
  out = _varint(1 << 3 | 1) + struct.pack('<d', wall_time) + _varint(2 << 3) + _varint(step)
  if file_version is not None:
    out += _field(3, file_version.encode())
  if session_start:  # Event.session_log = 7, SessionLog.status = 1.
    out += _field(7, _varint(1 << 3) + _varint(_SESSION_START))
  if scalars:
    values = b''.join(
        _field(1, _field(1, tag.encode()) + _varint(2 << 3 | 5) + struct.pack('<f', value))
        for tag, value in scalars.items())
    out += _field(5, values)
  return out


def frame_record(data: bytes) -> bytes:
  """One TFRecord: length, its masked CRC, the data, the data's masked CRC."""
  length = struct.pack('<Q', len(data))
  return length + struct.pack('<I', _masked_crc(length)) + data + struct.pack(
      '<I', _masked_crc(data))


class EventWriter:
  """Appends scalar summaries to a new event file in `logdir`, flushed after every write.

  `logdir` may be a bucket URI: the file is then rewritten whole at most every
  `upload_every_s` seconds and on `flush()` / `close()` (`vision_core.io.AppendFile`).
  """

  def __init__(self, logdir: str | os.PathLike, *, upload_every_s: float = 10.0):
    io.makedirs(logdir)
    name = f'events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}'
    self.path = io.join(logdir, name)
    self._file = io.AppendFile(self.path, upload_every_s=upload_every_s)
    self._write(encode_event(wall_time=time.time(), file_version='brain.Event:2'))

  def _write(self, event: bytes) -> None:
    self._file.append(frame_record(event))

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    self._write(encode_event(wall_time=time.time(), step=int(step),
                             scalars={k: float(v) for k, v in values.items()}))

  def purge_from(self, step: int) -> None:
    """Makes TensorBoard discard the events of steps >= `step` written before this one.

    Its loader treats a SessionLog START at step s as a restart and drops the earlier
    events of steps >= s from every file of the run: those of a run that went on past the
    checkpoint this one resumed from.
    """
    self._write(encode_event(wall_time=time.time(), step=int(step), session_start=True))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    self._file.close()
