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
