"""MNIST IDX sources: the file at fault is the one named, with what is wrong."""

import gzip
import shutil
import struct

import numpy as np
import pytest

from vision_core import data
from vision_core.errors import UserInputError


def _write(folder, labels, n=5):
  images = np.arange(n * 28 * 28, dtype=np.uint64).astype(np.uint8).reshape(n, 28, 28)
  with gzip.open(folder / 't10k-images-idx3-ubyte.gz', 'wb') as f:
    f.write(struct.pack('>IIII', 0x803, n, 28, 28) + images.tobytes())
  with gzip.open(folder / 't10k-labels-idx1-ubyte.gz', 'wb') as f:
    f.write(struct.pack('>II', 0x801, n) + np.asarray(labels, np.uint8).tobytes())
  return images


def test_a_label_past_9_names_the_labels_file(tmp_path):
  # ArraySource's range check named the images file ("...images-idx3-ubyte.gz labels: found
  # 0..12"), which holds no labels.
  _write(tmp_path, [0, 1, 12, 3, 4])
  with pytest.raises(UserInputError, match=r't10k-labels-idx1-ubyte\.gz: labels 0\.\.12; '
                                           r'expected MNIST digits 0\.\.9'):
    data.get_source(str(tmp_path), 'test')


def test_an_idx_file_given_as_the_dataset_is_not_called_missing(tmp_path):
  # It was "dataset folder .../t10k-images-idx3-ubyte.gz does not exist": it does.
  images = _write(tmp_path, [0, 1, 2, 3, 4])
  with pytest.raises(UserInputError, match=rf'{tmp_path}/t10k-images-idx3-ubyte\.gz is a file; '
                                           rf'expected the folder .*pass {tmp_path} for'):
    data.get_source(str(tmp_path / 't10k-images-idx3-ubyte.gz'), 'test')
  source = data.get_source(str(tmp_path), 'test')
  np.testing.assert_array_equal(source[2]['image'][..., 0], images[2])


def test_real_mnist_cut_short_or_with_a_wrong_magic_is_named(shared_data, tmp_path):
  """The real t10k files: whole they read (labels as in the file); cut inside the gzip
  stream, cut inside the IDX body, or with the magic of an IDX of another type, the message
  names the file and what is wrong."""
  source_dir = shared_data / 'mnist'
  raw_images = gzip.decompress((source_dir / 't10k-images-idx3-ubyte.gz').read_bytes())
  raw_labels = gzip.decompress((source_dir / 't10k-labels-idx1-ubyte.gz').read_bytes())
  shutil.copy(source_dir / 't10k-labels-idx1-ubyte.gz', tmp_path)
  target = tmp_path / 't10k-images-idx3-ubyte.gz'
  source = data.get_source(str(source_dir), 'test')
  np.testing.assert_array_equal(source.labels, np.frombuffer(raw_labels[8:], np.uint8))
  np.testing.assert_array_equal(source[9999]['image'].ravel(),
                                np.frombuffer(raw_images[-784:], np.uint8))
  cases = [
      (gzip.compress(raw_images)[:50_000], r'not a readable gzip/IDX file \(Compressed file'),
      (gzip.compress(raw_images[:-100]), r'header says \(10000, 28, 28\) = 7840000 bytes, '
                                         r'file has 7839900; the file is truncated'),
      (gzip.compress(b'\0\0\x0d\x03' + raw_images[4:]), r'not an IDX file of unsigned bytes '
                                                        r'\(magic 00000d03; expected 00000803'),
  ]
  for content, message in cases:
    target.write_bytes(content)
    with pytest.raises(UserInputError, match=rf'{target}: {message}'):
      data.get_source(str(tmp_path), 'test')
