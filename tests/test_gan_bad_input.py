"""Bad input to the GAN compressor/decompressor: each a clear message, inputs untouched."""

import hashlib
import struct
import zlib

import numpy as np
import pytest

from gan_jax import compress, decompress, fileformat, generators
from vision_core.errors import UserInputError

CONFIG = {'family': 'dcgan', 'latent_dim': 8, 'image_size': 28, 'channels': 1, 'width': 4}


@pytest.fixture(scope='module')
def gens():
  make = lambda seed: generators.make(CONFIG, generators.init_params(CONFIG, seed=seed))
  return make(0), make(1)


@pytest.fixture
def good(gens):
  z = np.random.default_rng(0).standard_normal(8).astype(np.float32)
  return fileformat.encode(z, generator_id=gens[0].identity, quantization='8bit',
                           image_size=(28, 28))


def test_truncated(good):
  for cut in (3, 20, len(good) - 1):
    with pytest.raises(UserInputError, match='truncated|not a gan_jax'):
      fileformat.decode(good[:cut], source='x.ganz')
  with pytest.raises(UserInputError, match=r'x.ganz: truncated or corrupt: its header promises'):
    fileformat.decode(good[:-5], source='x.ganz')


def test_flipped_byte_fails_crc(good):
  for i in (30, 40, len(good) - 6):
    bad = bytearray(good)
    bad[i] ^= 0x10
    with pytest.raises(UserInputError, match=r'x.ganz: (truncated or )?corrupt.*CRC32'):
      fileformat.decode(bytes(bad), source='x.ganz')


def test_wrong_magic_and_version(good):
  with pytest.raises(UserInputError, match=r"x.png: not a gan_jax compressed file \(magic"):
    fileformat.decode(b'\x89PNG' + good[4:], source='x.png')
  bad = bytearray(good)
  bad[4] = 9
  with pytest.raises(UserInputError, match='format version 9') as e:
    fileformat.decode(bytes(bad), source='x.ganz')
  assert 'more likely damaged' in str(e.value)  # A flipped version byte: the CRC says so.
  # A (future) version whose file is intact reads as just that.
  body = bytes(bad[:-4])
  with pytest.raises(UserInputError, match='format version 9') as e:
    fileformat.decode(body + struct.pack('<I', zlib.crc32(body)), source='x.ganz')
  assert 'damaged' not in str(e.value)
  with pytest.raises(UserInputError, match='quantization .17bit.'):
    fileformat.Quantization.parse('17bit')


def test_a_zero_image_size_with_a_valid_crc_is_corrupt(good):
  head = fileformat._HEAD  # pylint: disable=protected-access
  fields = list(head.unpack_from(good))
  fields[-2] = 0  # height 0: encode never writes it; decompress failed inside Pillow
  body = head.pack(*fields) + good[head.size:-4]
  with pytest.raises(UserInputError, match=r'x.ganz: corrupt: image size 0x28 in the header'):
    fileformat.decode(body + struct.pack('<I', zlib.crc32(body)), source='x.ganz')


def test_file_from_a_different_generator(gens, good):
  assert gens[0].identity != gens[1].identity
  with pytest.raises(UserInputError, match=r'x.ganz: made by generator [0-9a-f]{32}, but '
                     r'the generator given is [0-9a-f]{32}'):
    decompress.decompress(good, gens[1], source='x.ganz')
  assert decompress.decompress(good, gens[0]).shape == (28, 28, 1)


def test_wrong_image_size_error_or_resize(gens):
  image = np.random.default_rng(0).integers(0, 256, (40, 30, 3), dtype=np.uint8)
  with pytest.raises(UserInputError, match=r'cat.png: image is 30x40 pixels, but the '
                     r'generator makes 28x28; pass --resize'):
    compress.prepare(image, gens[0], source='cat.png')
  out = compress.prepare(image, gens[0], resize=True, source='cat.png')
  assert out.shape == (28, 28, 1) and out.dtype == np.uint8


def test_cli_messages_and_inputs_untouched(gens, tmp_path, capsys):
  gpath, other = tmp_path / 'g.npz', tmp_path / 'h.npz'
  generators.save(gpath, gens[0])
  generators.save(other, gens[1])
  from PIL import Image
  big = tmp_path / 'big.png'
  Image.fromarray(np.zeros((50, 50), np.uint8)).save(big)
  digest = hashlib.sha256(big.read_bytes()).hexdigest()
  with pytest.raises(SystemExit) as e:
    compress.main([str(big), '-o', str(tmp_path / 'o'), '--generator', str(gpath)])
  assert e.value.code == 2
  assert 'big.png: image is 50x50 pixels' in capsys.readouterr().err
  assert not (tmp_path / 'o' / 'big.ganz').exists()
  compress.main([str(big), '-o', str(tmp_path / 'o'), '--generator', str(gpath), '--resize',
                 '--steps', '5', '--restarts', '1'])
  assert hashlib.sha256(big.read_bytes()).hexdigest() == digest
  ganz = tmp_path / 'o' / 'big.ganz'
  gdigest = hashlib.sha256(ganz.read_bytes()).hexdigest()
  with pytest.raises(SystemExit):
    decompress.main([str(ganz), '-o', str(tmp_path / 'r'), '--generator', str(other)])
  assert 'made by generator' in capsys.readouterr().err
  truncated = tmp_path / 't.ganz'
  truncated.write_bytes(ganz.read_bytes()[:-3])
  with pytest.raises(SystemExit):
    decompress.main([str(truncated), '-o', str(tmp_path / 'r'), '--generator', str(gpath)])
  assert 't.ganz: truncated' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    decompress.main([str(tmp_path / 'missing.ganz'), '-o', str(tmp_path / 'r'),
                     '--generator', str(gpath)])
  assert 'missing.ganz: no such compressed file' in capsys.readouterr().err
  decompress.main([str(ganz), '-o', str(tmp_path / 'r'), '--generator', str(gpath),
                   '--original-size'])
  assert Image.open(tmp_path / 'r' / 'big.png').size == (50, 50)
  assert hashlib.sha256(ganz.read_bytes()).hexdigest() == gdigest
  not_generator = tmp_path / 'n.npz'
  np.savez(not_generator, a=np.zeros(3))
  with pytest.raises(SystemExit):
    decompress.main([str(ganz), '-o', str(tmp_path / 'r2'), '--generator', str(not_generator)])
  assert "no '__config__' entry" in capsys.readouterr().err
