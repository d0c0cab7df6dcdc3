"""Value ranges and dtypes of the pixel metrics: no silent wrong answer from a range mix-up."""

import jax.numpy as jnp
import numpy as np
import pytest

from vision_core.errors import UserInputError
from vit_jax import metrics


def _pair(size=24):
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (2, size, size, 3)).astype(np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
  return a, b


def _ranged(fn):
  if fn in (metrics.mse, metrics.pixel_row_fid):
    return fn
  return lambda a, b: fn(a, b, data_range=255.0)


@pytest.mark.parametrize('fn', [metrics.ssim, metrics.psnr, metrics.mse, metrics.pixel_row_fid])
def test_mixed_dtypes_are_refused(fn):
  a, b = _pair()
  score = _ranged(fn)
  # uint8 originals against [0, 1] float reconstructions used to be scored without complaint.
  with pytest.raises(UserInputError, match=r'a is uint8 but b is float64.*convert'):
    score(a, b / 255.0)
  with pytest.raises(UserInputError, match=r'a is float32 but b is uint8'):
    score(jnp.asarray(a, jnp.float32), jnp.asarray(b))
  with pytest.raises(UserInputError, match=r'a is uint8 but b is uint16.*>> 8'):
    score(a, b.astype(np.uint16) * 257)
  # Even when the float values are whole numbers 0..255: converting is one call, and the
  # values alone cannot tell 0..255 from a [0, 1] image that is all 0s and 1s.
  with pytest.raises(UserInputError, match='uint8 but b is float32'):
    score(a, b.astype(np.float32))


def test_ms_ssim_refuses_mixed_dtypes():
  a, b = _pair(176)
  with pytest.raises(UserInputError, match='ms_ssim: a is uint8 but b is float32'):
    metrics.ms_ssim(a, (b / 255.0).astype(np.float32), data_range=255.0)


@pytest.mark.parametrize('fn', [metrics.ssim, metrics.psnr, metrics.mse])
def test_float_precisions_may_be_mixed(fn):
  a, b = _pair()
  af, bf = a / 255.0, b / 255.0
  kwargs = {} if fn is metrics.mse else {'data_range': 1.0}
  np.testing.assert_allclose(np.asarray(fn(af.astype(np.float32), bf, **kwargs)),
                             np.asarray(fn(af, bf, **kwargs)), rtol=1e-5)
