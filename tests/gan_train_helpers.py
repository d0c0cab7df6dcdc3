"""Tiny DCGAN runs for the tests: an MNIST-layout dataset of IDX files and a config that
trains on it in a few seconds (tests/test_gan_train.py, tests/test_gan_workdir.py)."""

import gzip
import struct
import sys

import numpy as np


def write_idx(path, array):
  header = struct.pack('>BBBB', 0, 0, 8, array.ndim) + struct.pack(f'>{array.ndim}I',
                                                                   *array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def tiny_config(root):
  """configs/gan.py:dcgan,mnist shrunk to 4 steps of batch 8 on 2 devices, on 40 images of
  bars written to `root` (MNIST's t10k files)."""
  sys.path.insert(0, '.')
  from configs import gan as gan_config  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  images = np.zeros((40, 28, 28), np.uint8)
  for i, image in enumerate(images):  # Bars at random rows: something to learn.
    image[rng.integers(4, 24):, 10 + i % 5:14 + i % 5] = 255
  write_idx(root / 't10k-images-idx3-ubyte.gz', images)
  write_idx(root / 't10k-labels-idx1-ubyte.gz', np.arange(40) % 10)
  c = gan_config.get_config('dcgan,mnist')
  c.dataset = str(root)
  c.generator.width = c.discriminator.width = 4
  c.generator.latent_dim = 8
  c.batch_size, c.total_steps, c.fid_samples, c.num_devices = 8, 4, 16, 2
  c.log_every = c.sample_every = c.fid_every = c.checkpoint_every = 2
  return c
