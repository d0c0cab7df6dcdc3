"""Value ranges and dtypes of the pixel metrics: no silent wrong answer from a range mix-up."""

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.metrics

from vision_core.errors import UserInputError
from vit_jax import metrics

# (metric, smallest image side it accepts)
RANGED = [(metrics.ssim, 24), (metrics.ms_ssim, 176), (metrics.psnr, 24)]


def _pair(size=24):
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (2, size, size, 3)).astype(np.uint8)
  b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(np.uint8)
  return a, b


def _skimage_ssim(x, y, **kwargs):
  return skimage.metrics.structural_similarity(
      x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, channel_axis=-1,
      **kwargs)


@pytest.mark.parametrize('fn,size', RANGED)
def test_float_images_need_data_range(fn, size):
  a, b = _pair(size)
  af, bf = a / 255.0, b / 255.0
  # SSIM of [0, 1] floats with the old default 255 was 0.996 even for two unrelated noise
  # images (C1, C2 swamp the statistics); the dtype cannot tell [0, 1] from [0, 255].
  with pytest.raises(UserInputError, match=r'float64.*span \[0, 1\].*data_range=1\.0'):
    fn(af, bf)
  with pytest.raises(UserInputError, match='float32.*data_range'):
    fn(jnp.asarray(af, jnp.float32), jnp.asarray(bf, jnp.float32))
  np.testing.assert_allclose(np.asarray(fn(af, bf, data_range=1.0)),
                             np.asarray(fn(a, b, data_range=255.0)), rtol=2e-5)


def test_skimage_also_refuses_float_ssim_without_data_range():
  a, b = _pair()
  with pytest.raises(ValueError, match='data_range'):
    _skimage_ssim(a[0] / 255.0, b[0] / 255.0)


@pytest.mark.parametrize('fn,size', RANGED)
def test_uint8_defaults_to_255_like_skimage(fn, size):
  a, b = _pair(size)
  got = np.asarray(fn(a, b))  # PSNR used to need data_range even for uint8
  np.testing.assert_array_equal(got, np.asarray(fn(a, b, data_range=255.0)))
  if fn is metrics.ssim:
    np.testing.assert_allclose(got, [_skimage_ssim(x, y) for x, y in zip(a, b)], atol=1e-5)
  if fn is metrics.psnr:
    np.testing.assert_allclose(
        got, [skimage.metrics.peak_signal_noise_ratio(x, y) for x, y in zip(a, b)], rtol=1e-6)


@pytest.mark.parametrize('fn,size', RANGED)
def test_wider_integers_need_data_range(fn, size):
  a, b = _pair(size)
  a16, b16 = a.astype(np.uint16) * 257, b.astype(np.uint16) * 257
  # uint16 often holds 10- or 12-bit data, so 65535 is not taken for granted.
  with pytest.raises(UserInputError, match=r'uint16.*data_range.*65535\.0.*4095\.0'):
    fn(a16, b16)
  np.testing.assert_allclose(np.asarray(fn(a16, b16, data_range=65535.0)),
                             np.asarray(fn(a, b)), rtol=2e-5)


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
