"""vision_core.data.randaugment against numpy formulations of its ops."""

import numpy as np
import pytest

from vision_core.data import parse_preprocess, randaugment
from vision_core.errors import UserInputError


def image(channels=3, seed=0, size=(20, 24)):
  return np.random.default_rng(seed).integers(0, 256, (*size, channels), dtype=np.uint8)


@pytest.mark.parametrize('channels', [3, 1])
def test_magnitude_zero_is_the_identity_for_every_op_with_a_level(channels):
  x = image(channels)
  for name in randaugment.OPS:
    if name in ('autocontrast', 'equalize'):
      continue  # no magnitude: they always act
    for sign in (1, -1):
      np.testing.assert_array_equal(randaugment.apply_op(name, x, 0, sign), x, err_msg=name)


def test_translate_is_an_exact_shift_with_grey_fill():
  x = image()  # 24 wide, 20 high: 0.45 of the side at magnitude 10 -> 11 and 9 pixels
  out = randaugment.apply_op('translate_x', x, 10, 1)
  np.testing.assert_array_equal(out[:, :13], x[:, 11:])
  assert np.all(out[:, 13:] == randaugment.FILL)
  out = randaugment.apply_op('translate_y', x, 10, -1)
  np.testing.assert_array_equal(out[9:], x[:11])
  assert np.all(out[:9] == randaugment.FILL)


def test_posterize_solarize_brightness_match_numpy():
  x = image()
  np.testing.assert_array_equal(randaugment.apply_op('posterize', x, 5),  # 8 - 2 = 6 bits
                                x & np.uint8(0b11111100))
  np.testing.assert_array_equal(randaugment.apply_op('solarize', x, 5),  # threshold 128
                                np.where(x >= 128, 255 - x, x))
  factor = 1 + 0.9 * 0.5
  expected = np.clip(x.astype(np.float64) * factor, 0, 255)
  assert np.abs(randaugment.apply_op('brightness', x, 5).astype(np.float64) - expected).max() <= 1
  # Contrast scales about the mean grey level (ITU-R 601-2 luma), clipped.
  grey = np.round(np.mean(x @ np.array([0.299, 0.587, 0.114])))
  expected = np.clip(grey + (x - grey) * (1 - 0.9 * 0.5), 0, 255)
  assert np.abs(randaugment.apply_op('contrast', x, 5, -1) - expected).max() <= 1


def test_shear_and_rotate_keep_the_centre_pixel_and_move_the_rest():
  x = image(size=(21, 21))
  for name in ('shear_x', 'shear_y', 'rotate'):
    out = randaugment.apply_op(name, x, 10, 1)
    assert out.shape == x.shape and out.dtype == np.uint8
    if name == 'rotate':  # about the centre: the centre pixel stays
      np.testing.assert_array_equal(out[10, 10], x[10, 10])
    assert np.mean(out != x) > 0.5, name


def test_pipeline_is_deterministic_per_seed_and_varies_between_seeds():
  transform = parse_preprocess('randaugment(2, 9)|value_range(-1, 1)')
  record = {'image': image(), 'label': 3}
  a = transform.random_map(record, np.random.default_rng(7))
  b = transform.random_map(record, np.random.default_rng(7))
  np.testing.assert_array_equal(a['image'], b['image'])
  assert a['label'] == 3 and a['image'].dtype == np.float32 and a['image'].shape == (20, 24, 3)
  outputs = {transform.random_map(record, np.random.default_rng(s))['image'].tobytes()
             for s in range(8)}
  assert len(outputs) > 4
  assert np.array_equal(parse_preprocess('randaugment(0, 9)')(record)['image'], record['image'])


@pytest.mark.parametrize('spec,match', [
    ('randaugment(2, 11)', r'magnitude=11.*\[0, 10\]'),
    ('randaugment(-1, 5)', 'num_ops=-1'),
    ('value_range(-1, 1)|randaugment(2, 9)', 'uint8.*before value_range')])
def test_bad_arguments_and_order_are_clear_errors(spec, match):
  with pytest.raises(UserInputError, match=match):
    parse_preprocess(spec)({'image': image(), 'label': 0})
