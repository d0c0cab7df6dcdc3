"""Preprocessing specs that cannot work are named when parsed, not in the loader's threads."""

import numpy as np
import pytest

from vision_core import data
from vision_core.errors import UserInputError


@pytest.mark.parametrize('op', ['resize(16)', 'resize_small(16)', 'inception_crop(16)',
                                'randaugment(2, 9)'])
def test_uint8_ops_after_value_range_are_named_when_parsed(op):
  # Pillow has no float RGB images: these failed in every loader thread with Pillow's
  # "TypeError: Cannot handle this data type: (1, 1, 3), <f4" (randaugment: at run time).
  with pytest.raises(UserInputError, match=rf'{op.split("(")[0]}.*after \'value_range\(-1, '
                                           r'1\)\'.*put it before value_range'):
    data.parse_preprocess(f'flip_lr|value_range(-1, 1)|{op}')
  image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  out = data.parse_preprocess(f'{op}|value_range(-1, 1)')(
      {'image': image}, np.random.default_rng(0))['image']
  assert out.dtype == np.float32 and -1 <= out.min() and out.max() <= 1


@pytest.mark.parametrize('spec, message', [
    ('resize_small((16, 16))', r'size \(16, 16\): expected a positive int \(the shorter side\)'),
    ('inception_crop(8, area_min=-5)', r'area_min=-5, area_max=100: expected percentages'),
    ('inception_crop(8, 50, 10)', r'area_min=50, area_max=10: expected percentages'),
    ('inception_crop(8, area_max=0)', r'area_min=5, area_max=0: expected percentages'),
    ('inception_crop(8, area_max=150)', r'area_min=5, area_max=150: expected percentages'),
    ('inception_crop(8, 0.08, 1)', r'area_max=1: the areas are percentages .* pass \(8, 100\)'),
    ("resize(8, method='cubic')", "method 'cubic': expected one of nearest, bilinear, bicubic"),
])
def test_bad_resize_small_and_inception_crop_arguments_are_named_when_parsed(spec, message):
  # They passed parsing; the first image then failed in a loader thread ("unsupported operand
  # type(s) for /: 'tuple' and 'int'", "math domain error", "high - low < 0").
  with pytest.raises(UserInputError, match=rf'preprocessing op .*{message}'):
    data.parse_preprocess(spec)


@pytest.mark.parametrize('method', ['bilinear', 'bicubic', 'nearest', 'lanczos'])
def test_resize_methods_are_pillows_filters(method):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  image = np.random.default_rng(1).integers(0, 256, (30, 45, 3), dtype=np.uint8)
  filters = {'bilinear': Image.BILINEAR, 'bicubic': Image.BICUBIC, 'nearest': Image.NEAREST,
             'lanczos': Image.LANCZOS}
  expected = np.asarray(Image.fromarray(image).resize((13, 11), filters[method]))
  out = data.parse_preprocess(f"resize((11, 13), method='{method}')")({'image': image})['image']
  np.testing.assert_array_equal(out, expected)
  small = data.parse_preprocess(f"resize_small(15, method='{method}')")({'image': image})
  np.testing.assert_array_equal(small['image'], np.asarray(
      Image.fromarray(image).resize((22, 15), filters[method])))  # 45 * 15 / 30 = 22.5 -> 22


def test_inception_crop_area_range_is_honoured():
  """Crops of inception_crop(s, 20, 30) cover 20-30% of the image (up to rounding), with an
  aspect ratio in [3/4, 4/3]: the box read back from an image whose pixels are their row and
  column (the crop is resized back to the image size, so its corners are the box's)."""
  h, w = 60, 80
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing='ij')
  image = np.stack([rows, cols, rows], -1).astype(np.uint8)
  op = data.parse_preprocess(f'inception_crop(({h}, {w}), 20, 30)')
  for seed in range(50):
    out = op({'image': image}, np.random.default_rng(seed))['image'].astype(int)
    ch, cw = out[-1, 0, 0] - out[0, 0, 0] + 1, out[0, -1, 1] - out[0, 0, 1] + 1
    assert 0.19 <= ch * cw / (h * w) <= 0.31, (seed, ch, cw)
    assert 3 / 4 - 0.05 <= cw / ch <= 4 / 3 + 0.05, (seed, ch, cw)
