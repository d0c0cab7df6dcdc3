"""gan_jax compress/decompress command lines: output names, partial outputs, file format edges."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from gan_jax import compress, decompress, fileformat, generators
from tests import gan_search_helpers
from vision_core.errors import UserInputError

CONFIG = {'family': 'dcgan', 'latent_dim': 8, 'image_size': 28, 'channels': 1, 'width': 4}


@pytest.fixture(scope='module', autouse=True)
def short_search_chunks():
  """The compress runs here search in compiled chunks of 2 steps, not 10: compiling the
  chunk was most of their time (tests/gan_search_helpers.py)."""
  with pytest.MonkeyPatch.context() as patch:
    gan_search_helpers.shorten_chunks(patch)
    yield


@pytest.fixture(scope='module')
def gen_path(tmp_path_factory):
  generator = generators.make(CONFIG, generators.init_params(CONFIG, seed=0))
  path = tmp_path_factory.mktemp('gen') / 'g.npz'
  generators.save(path, generator)
  return str(path), generator


def _ganz(path, generator, seed):
  z = np.random.default_rng(seed).standard_normal(8).astype(np.float32)
  data = fileformat.encode(z, generator_id=generator.identity, quantization='8bit',
                           image_size=(28, 28))
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data)
  return data


def test_decompress_same_name_from_two_folders_is_refused(gen_path, tmp_path, capsys):
  gpath, generator = gen_path
  a, b = tmp_path / 'a' / 'x.ganz', tmp_path / 'b' / 'x.ganz'
  _ganz(a, generator, 0)
  _ganz(b, generator, 1)
  out = tmp_path / 'out'
  for extra in ([], ['--force']):
    with pytest.raises(SystemExit) as e:
      decompress.main([str(a), str(b), '-o', str(out), '--generator', gpath, *extra])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'several inputs would write' in err and 'x.png' in err, err
    assert not out.exists()  # Nothing written, in particular not b's image over a's.


def test_decompress_checks_every_file_before_writing(gen_path, tmp_path, capsys):
  gpath, generator = gen_path
  good, bad = tmp_path / 'good.ganz', tmp_path / 'bad.ganz'
  data = _ganz(good, generator, 0)
  damaged = bytearray(data)
  damaged[-6] ^= 0xFF
  bad.write_bytes(bytes(damaged))
  out = tmp_path / 'out'
  with pytest.raises(SystemExit):
    decompress.main([str(good), str(bad), '-o', str(out), '--generator', gpath])
  err = capsys.readouterr().err
  assert 'bad.ganz: corrupt: CRC32 mismatch' in err
  assert 'No PNG was written' in err and f'leave {bad} out to decompress the others' in err
  assert not (out / 'good.png').exists()
  decompress.main([str(good), '-o', str(out), '--generator', gpath])
  expected = decompress.decompress(data, generator)
  np.testing.assert_array_equal(np.asarray(Image.open(out / 'good.png')), expected[..., 0])


def test_compress_report_counts_the_input_files_own_channels(gen_path, tmp_path):
  gpath, _ = gen_path
  rng = np.random.default_rng(0)
  grey, rgb = tmp_path / 'grey.png', tmp_path / 'rgb.png'
  Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(grey)
  Image.fromarray(rng.integers(0, 256, (28, 28, 3), dtype=np.uint8)).save(rgb)
  report = tmp_path / 'report.json'
  compress.main([str(grey), str(rgb), '-o', str(tmp_path / 'o'), '--generator', gpath,
                 '--steps', '2', '--restarts', '1', '--report', str(report)])
  rows = {os.path.basename(r['image']): r for r in json.loads(report.read_text())}
  for name, raw_bytes in (('grey.png', 28 * 28), ('rgb.png', 28 * 28 * 3)):
    size = os.path.getsize(tmp_path / 'o' / name.replace('.png', '.ganz'))
    assert rows[name]['bytes'] == size
    assert rows[name]['ratio_vs_raw_pixels'] == pytest.approx(raw_bytes / size)


def test_encode_refuses_what_the_file_cannot_hold():
  gid = 'ab' * 32
  with pytest.raises(UserInputError, match='do not fit float16'):
    fileformat.encode(np.array([1e5, 1.0], np.float32), generator_id=gid,
                      quantization='float16', image_size=(1, 1))
  with pytest.raises(UserInputError, match='too wide for 8bit'):
    fileformat.encode(np.array([-3e38, 3e38], np.float32), generator_id=gid,
                      quantization='8bit', image_size=(1, 1))
  for bad in ('ab', 'not hex', b'\x01\x02', None):
    with pytest.raises(UserInputError, match='generator_id'):
      fileformat.encode(np.zeros(4), generator_id=bad, quantization='8bit', image_size=(1, 1))
  # Arguments that were raw numpy/struct/Python errors deep inside.
  for kwargs, message in ((dict(latent=np.zeros(0)), r'^latent: expected a non-empty array'),
                          (dict(latent=np.zeros(2, complex)), r'of real numbers, got complex'),
                          (dict(image_size=32), r'^image size 32: expected \(height, width\)'),
                          (dict(image_size=(32.5, 32)), r'expected \(height, width\)')):
    kwargs = {'latent': np.zeros(4), 'image_size': (1, 1), **kwargs}
    with pytest.raises(UserInputError, match=message):
      fileformat.encode(generator_id=gid, quantization='8bit', **kwargs)
  with pytest.raises(UserInputError, match=r"^decode: expected the file's bytes, got a str; "
                     r'read\(path\) reads a file\.$'):
    fileformat.decode('/tmp/x.ganz')
  # Values that fit still round-trip exactly as the quantiser says.
  z = np.array([-65504.0, 0.5, 3.0], np.float32)
  item = fileformat.decode(fileformat.encode(z, generator_id=gid, quantization='float16',
                                             image_size=(1, 1)))
  np.testing.assert_array_equal(item.latent, z)


def test_decode_refuses_nan_latent_even_with_a_valid_crc():
  import struct
  import zlib
  data = fileformat.encode(np.zeros(4, np.float32), generator_id='ab' * 32,
                           quantization='float32', image_size=(2, 2))
  body = bytearray(data[:-4])
  body[-4:] = struct.pack('<f', float('nan'))  # The last latent value.
  crafted = bytes(body) + struct.pack('<I', zlib.crc32(bytes(body)))
  with pytest.raises(UserInputError, match=r'x.ganz: corrupt: the latent has NaN'):
    fileformat.decode(crafted, source='x.ganz')


def _transparent_disc():
  """A red disc on a fully transparent background whose stored colour is black."""
  y, x = np.mgrid[:28, :28]
  rgba = np.zeros((28, 28, 4), np.uint8)
  rgba[(x - 14) ** 2 + (y - 14) ** 2 < 64] = (255, 0, 0, 255)
  rgba[(x - 14) ** 2 + (y - 14) ** 2 < 16, 3] = 128  # a half-transparent centre
  return rgba


def test_compress_composites_transparency_on_white(gen_path, tmp_path):
  # Before: Pillow's RGBA -> RGB dropped alpha, so the transparent background was compressed
  # (and scored) as the black it stores, not the white a viewer shows.
  gpath, generator = gen_path
  rgba = _transparent_disc()
  alpha = rgba[..., 3:].astype(np.float64) / 255
  flat = np.round(rgba[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
  paths = {'rgba': tmp_path / 'rgba.png', 'la': tmp_path / 'la.png',
           'pal': tmp_path / 'pal.png'}
  Image.fromarray(rgba).save(paths['rgba'])
  la = np.stack([rgba[..., 0], rgba[..., 3]], -1)
  Image.fromarray(la, 'LA').save(paths['la'])
  pal = Image.fromarray(rgba[..., :3]).convert('P')  # index of black = transparent
  pal.save(paths['pal'], transparency=pal.getpixel((0, 0)))
  pass
  la_flat = np.round(la[..., :1] * alpha + 255 * (1 - alpha)).astype(np.uint8)
  np.testing.assert_array_equal(compress.read_input(str(paths['la'])),
                                np.repeat(la_flat, 3, -1))
  assert (compress.read_input(str(paths['pal']))[0, 0] == 255).all()
  report = tmp_path / 'report.json'
  # Two images, as the other compress tests here: one compiled search serves them all.
  compress.main([str(paths['rgba']), str(paths['la']), '-o', str(tmp_path / 'o'),
                 '--generator', gpath, '--steps', '2', '--restarts', '1', '--report',
                 str(report)])
  rows = {os.path.basename(r['image']): r for r in json.loads(report.read_text())}
  for name, shown in (('rgba', flat), ('la', np.repeat(la_flat, 3, -1))):
    recon = decompress.decompress((tmp_path / 'o' / f'{name}.ganz').read_bytes(), generator)
    target = np.asarray(Image.fromarray(shown).convert('L'))[..., None]  # 1-channel generator
    mse = np.mean((recon.astype(np.float64) - target) ** 2)
    assert rows[f'{name}.png']['psnr'] == pytest.approx(10 * np.log10(255 ** 2 / mse))


def test_folders_stand_for_their_files(gen_path, tmp_path, capsys):
  """As vit_jax.predict takes folders: decompress a folder's .ganz files, compress a
  folder's images (not recursive); a folder without any is said, not an errno."""
  gpath, generator = gen_path
  _ganz(tmp_path / 'files' / 'x.ganz', generator, 0)
  _ganz(tmp_path / 'files' / 'y.ganz', generator, 1)
  (tmp_path / 'files' / 'notes.txt').write_text('not a .ganz file')
  decompress.main([str(tmp_path / 'files'), '-o', str(tmp_path / 'out'), '--generator', gpath])
  assert sorted(os.listdir(tmp_path / 'out')) == ['x.png', 'y.png']
  (tmp_path / 'empty').mkdir()
  for main in (decompress.main, compress.main):
    with pytest.raises(SystemExit) as e:
      main([str(tmp_path / 'empty'), '-o', str(tmp_path / 'out2'), '--generator', gpath])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert 'empty: folder holds no ' in err and 'Errno' not in err, err
  with pytest.raises(SystemExit):
    compress.main([str(tmp_path / 'gone.png'), '-o', str(tmp_path / 'out2'), '--generator', gpath])
  assert 'gone.png: no such image file or folder.' in capsys.readouterr().err
  compress.main([str(tmp_path / 'out'), '-o', str(tmp_path / 'again'), '--generator', gpath,
                 '--steps', '2', '--restarts', '1'])
  assert sorted(os.listdir(tmp_path / 'again')) == ['x.ganz', 'y.ganz']


def test_compress_several_inputs_errors_name_them(gen_path, tmp_path, capsys):
  gpath, _ = gen_path
  good, wide = tmp_path / 'a' / 'x.png', tmp_path / 'b' / 'x.png'
  for path, shape in ((good, (28, 28)), (wide, (28, 40))):
    path.parent.mkdir()
    Image.fromarray(np.zeros(shape, np.uint8)).save(path)
  out = tmp_path / 'out'
  with pytest.raises(SystemExit):
    compress.main([str(good), str(wide), '-o', str(out), '--generator', gpath])
  err = capsys.readouterr().err
  assert f"would write ['{out / 'x.ganz'}']: ['{good}', '{wide}']" in err, err
  wide_renamed = tmp_path / 'b' / 'y.png'
  wide.rename(wide_renamed)
  with pytest.raises(SystemExit):
    compress.main([str(good), str(wide_renamed), '-o', str(out), '--generator', gpath])
  err = capsys.readouterr().err
  assert 'y.png: image is 40x28 pixels' in err
  assert f'No .ganz file was written; leave {wide_renamed} out' in err, err
  assert not out.exists()


def test_compress_report_never_replaces_an_input_or_output(gen_path, tmp_path, capsys):
  gpath, _ = gen_path
  image = tmp_path / 'x.png'
  Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
  before = image.read_bytes()
  out = tmp_path / 'out'
  for report in (image, out / 'x.ganz', gpath):
    with pytest.raises(SystemExit):
      compress.main([str(image), '-o', str(out), '--generator', gpath, '--steps', '1',
                     '--restarts', '1', '--report', str(report), '--force'])
    assert 'an input or output of this run; give it another name' in capsys.readouterr().err
  assert image.read_bytes() == before  # Before: the user's image became the JSON report.
  assert not out.exists()
