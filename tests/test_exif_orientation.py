"""Image readers apply the EXIF Orientation tag (0x0112), as OpenCV's imread does."""

import warnings

import cv2
import numpy as np
import pytest
from PIL import Image

from vision_core import images
from vision_core.data import sources
from vit_jax import assess_io

ORIENTATION = 0x0112
BLOCK = 8  # Flat 8x8 blocks: JPEG (quality 100, no chroma subsampling) keeps them nearly exact.


def _stored(blocks_h=3, blocks_w=5, seed=0) -> np.ndarray:
  """A non-square `[3 * 8, 5 * 8, 3]` uint8 image of flat blocks, each a different colour."""
  colours = np.random.default_rng(seed).permutation(256)[:blocks_h * blocks_w * 3]
  grid = colours.reshape(blocks_h, blocks_w, 3).astype(np.uint8)
  return np.repeat(np.repeat(grid, BLOCK, axis=0), BLOCK, axis=1)


def _upright(stored: np.ndarray, orientation: int) -> np.ndarray:
  """The picture as shown, `[H, W, C]`, by the EXIF specification's table of values.

  Each value names the sides of the shown picture that the stored row 0 and column 0 are.
  Written here with numpy, independently of the Pillow transposes the code uses.
  """
  row0_side, col0_side = {1: ('top', 'left'), 2: ('top', 'right'), 3: ('bottom', 'right'),
                          4: ('bottom', 'left'), 5: ('left', 'top'), 6: ('right', 'top'),
                          7: ('right', 'bottom'), 8: ('left', 'bottom')}[orientation]
  shown = stored
  if row0_side in ('left', 'right'):  # Stored rows are shown as columns.
    shown = np.swapaxes(shown, 0, 1)  # Now row 0 is shown left, column 0 top.
    if row0_side == 'right':
      shown = np.flip(shown, axis=1)
    if col0_side == 'bottom':
      shown = np.flip(shown, axis=0)
  else:
    if row0_side == 'bottom':
      shown = np.flip(shown, axis=0)
    if col0_side == 'right':
      shown = np.flip(shown, axis=1)
  return shown


def test_upright_follows_the_specification_examples():
  # The named turns of the specification, as a check of `_upright` itself.
  a = _stored()
  np.testing.assert_array_equal(_upright(a, 3), np.rot90(a, 2))
  np.testing.assert_array_equal(_upright(a, 6), np.rot90(a, -1))  # Turn clockwise to show.
  np.testing.assert_array_equal(_upright(a, 8), np.rot90(a, 1))   # Anticlockwise.
  np.testing.assert_array_equal(_upright(a, 5), np.transpose(a, (1, 0, 2)))
  np.testing.assert_array_equal(_upright(a, 7), np.rot90(np.transpose(a, (1, 0, 2)), 2))


def _save(pixels: np.ndarray, path, orientation=None, **kwargs) -> None:
  exif = Image.Exif()
  if orientation is not None:
    exif[ORIENTATION] = orientation
  Image.fromarray(pixels).save(path, exif=exif, **kwargs)


# Lossless formats compare exactly; JPEG at quality 100 is off by a few levels, far from the
# 100-odd levels between neighbouring blocks that a wrong turn would show.
FORMATS = {'png': ({}, 0), 'webp': ({'lossless': True}, 0),
           'jpg': ({'quality': 100, 'subsampling': 0}, 6)}


@pytest.mark.parametrize('ext', sorted(FORMATS))
@pytest.mark.parametrize('orientation', range(1, 9))
def test_readers_show_every_orientation_upright(tmp_path, ext, orientation):
  stored = _stored()
  kwargs, tolerance = FORMATS[ext]
  path = str(tmp_path / f'photo.{ext}')
  _save(stored, path, orientation, **kwargs)
  with Image.open(path) as im:  # The file really carries the tag, and the stored pixels.
    assert im.getexif()[ORIENTATION] == orientation
    assert im.size == (stored.shape[1], stored.shape[0])
  expected = _upright(stored, orientation).astype(int)
  got = images.read_image(path)
  metrics_pixels, notes = assess_io.read_for_metrics(path)
  assert notes == []
  for array in (got, metrics_pixels, cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1]):
    assert array.shape == expected.shape
    assert np.abs(array.astype(int) - expected).max() <= tolerance


def test_grey_and_16_bit_images_are_turned_too(tmp_path):
  grey = _stored()[..., 0]
  _save(grey, tmp_path / 'grey.png', 6)
  expected = _upright(grey[..., None], 6)
  np.testing.assert_array_equal(images.read_image(tmp_path / 'grey.png', mode='L'), expected)
  np.testing.assert_array_equal(assess_io.read_for_metrics(str(tmp_path / 'grey.png'))[0],
                                expected)
  # 16-bit samples are rebuilt as a new 8-bit image before the turn: the tag must still count.
  _save(grey.astype(np.uint16) * 257, tmp_path / 'deep.png', 8)
  expected = _upright(grey[..., None], 8)
  np.testing.assert_array_equal(images.read_image(tmp_path / 'deep.png', mode='L'), expected)
  np.testing.assert_array_equal(assess_io.read_for_metrics(str(tmp_path / 'deep.png'))[0],
                                expected)


def test_tiff_orientation_is_applied_once(tmp_path):
  # Pillow turns TIFFs itself when it loads them; the shared helper must not turn them again.
  stored = _stored()
  Image.fromarray(stored).save(tmp_path / 'scan.tif', tiffinfo={ORIENTATION: 6})
  np.testing.assert_array_equal(images.read_image(tmp_path / 'scan.tif'), _upright(stored, 6))
  np.testing.assert_array_equal(assess_io.read_for_metrics(str(tmp_path / 'scan.tif'))[0],
                                _upright(stored, 6))


def test_image_folder_dataset_reads_upright(tmp_path):
  stored = _stored()
  (tmp_path / 'train' / 'cat').mkdir(parents=True)
  _save(stored, tmp_path / 'train' / 'cat' / 'phone.png', 6)
  source = sources.ImageFolderSource(str(tmp_path), 'train')
  np.testing.assert_array_equal(source[0]['image'], _upright(stored, 6))


@pytest.mark.parametrize('orientation', [None, 1, 0, 9])
def test_without_a_turn_the_pixels_are_as_stored_and_not_copied(tmp_path, orientation):
  # No tag, 1, and the invalid 0 and 9 (shown as stored by OpenCV too) change nothing.
  stored = _stored()
  path = str(tmp_path / 'plain.png')
  _save(stored, path, orientation)
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    np.testing.assert_array_equal(images.read_image(path), stored)
    np.testing.assert_array_equal(assess_io.read_for_metrics(path)[0], stored)
  with Image.open(path) as im:
    im.load()
    assert images.exif_upright(im, path) is im  # Training decodes every step: no copies.


@pytest.mark.parametrize('ext', ['png', 'webp', 'jpg'])
def test_damaged_exif_block_reads_the_stored_pixels(tmp_path, ext):
  # The pixels are intact; the damaged metadata is reported by name, not made an error.
  stored = _stored()
  kwargs, tolerance = FORMATS[ext]
  path = str(tmp_path / f'damaged.{ext}')
  good = Image.Exif()
  good[ORIENTATION] = 6
  for name, block in {'garbage': b'Exif\0\0not a TIFF header at all',
                      'cut': good.tobytes()[:10]}.items():
    Image.fromarray(stored).save(path, exif=block, **kwargs)
    for read in (images.read_image, lambda p: assess_io.read_for_metrics(p)[0]):
      with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        got = read(path)
      assert np.abs(got.astype(int) - stored).max() <= tolerance, name
      ours = [str(w.message) for w in caught if 'EXIF block unreadable' in str(w.message)]
      # Pillow's JPEG reader drops some broken blocks itself: then there is nothing to warn.
      assert all(m.startswith(f'{path}: ') for m in ours), ours
      if ext != 'jpg':
        assert ours, name
