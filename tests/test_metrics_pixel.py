"""MSE and PSNR precision against scikit-image's float64, on inputs float32 cannot hold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage.data
import skimage.metrics

from vision_core import mesh as mesh_lib
from vit_jax import metrics


def _unit_float_image():
  return skimage.data.astronaut()[:128, :96] / 255.0  # float64 in [0, 1]


def _check(a, b, data_range, rtol=1e-6, dtol=1e-4):
  want_mse = skimage.metrics.mean_squared_error(a, b)
  want_psnr = skimage.metrics.peak_signal_noise_ratio(a, b, data_range=data_range)
  got_mse = float(metrics.mse(a[None], b[None])[0])
  got_psnr = float(metrics.psnr(a[None], b[None], data_range=data_range)[0])
  assert got_mse == pytest.approx(want_mse, rel=rtol, abs=0)
  assert got_psnr == pytest.approx(want_psnr, abs=dtol)


@pytest.mark.parametrize('noise', [1e-6, 1e-9, 1e-13])
def test_near_identical_float64_images_match_skimage(noise):
  # Before the fix, both images were rounded to float32 (~6e-8 relative) before subtracting:
  # at noise 1e-9 the MSE was 20x too large and the PSNR 13 dB too low.
  a = _unit_float_image()
  b = a + np.random.default_rng(0).normal(0, noise, a.shape)
  _check(a, b, 1.0)


def test_one_tiny_difference_is_finite_not_inf():
  a = _unit_float_image()
  b = a.copy()
  b[5, 7, 1] += 1e-9  # rounds away in float32: was MSE 0 and PSNR inf
  _check(a, b, 1.0)
  a = np.zeros((16, 16, 1))
  b = a.copy()
  b[3, 4, 0] = 1e-25  # MSE ~4e-53 is below float32's range; the PSNR is still finite
  got = float(metrics.psnr(a[None], b[None], data_range=1.0)[0])
  assert got == pytest.approx(skimage.metrics.peak_signal_noise_ratio(a, b, data_range=1.0),
                              abs=1e-3)


def test_large_offset_and_wide_integers_match_skimage():
  a = _unit_float_image() + 1000.0
  b = a + np.random.default_rng(1).normal(0, 1e-2, a.shape)
  _check(a, b, 1.0)
  big = (np.arange(4 * 5 * 3, dtype=np.int64).reshape(4, 5, 3) + 2**40)  # not float32-exact
  _check(big, big + np.int64(1), 2.0**41)


def test_uint8_and_float32_still_match_skimage():
  a = skimage.data.astronaut()[:64, :80]
  b = np.clip(a.astype(int) + np.random.default_rng(2).integers(-3, 4, a.shape), 0, 255)
  _check(a, b.astype(np.uint8), 255.0)
  af = (a / 255.0).astype(np.float32)
  _check(af, (af + np.float32(1e-3)).astype(np.float32), 1.0)
  # data_range may be passed by position, as ssim's and skimage's may.
  np.testing.assert_array_equal(metrics.psnr(af[None], af[None] + 1e-3, 1.0),
                                metrics.psnr(af[None], af[None] + 1e-3, data_range=1.0))


def test_identical_images_give_zero_and_inf_like_skimage():
  for a, data_range in ((skimage.data.astronaut()[:32, :32], 255.0),
                        (_unit_float_image(), 1.0)):
    assert skimage.metrics.mean_squared_error(a, a.copy()) == 0.0
    assert float(metrics.mse(a[None], a[None].copy())[0]) == 0.0
    with np.errstate(divide='ignore'):
      assert skimage.metrics.peak_signal_noise_ratio(a, a.copy(), data_range=data_range) == np.inf
    assert float(metrics.psnr(a[None], a[None].copy(), data_range=data_range)[0]) == np.inf


def test_float64_device_arrays_under_x64_subtract_in_float64():
  a = _unit_float_image()
  b = a + np.random.default_rng(3).normal(0, 1e-9, a.shape)
  with jax.enable_x64(True):
    got = float(metrics.mse(jnp.asarray(a)[None], jnp.asarray(b)[None])[0])
  assert got == pytest.approx(skimage.metrics.mean_squared_error(a, b), rel=1e-6, abs=0)


def test_sharded_batch_keeps_its_sharding_and_values():
  mesh = mesh_lib.make_mesh((-1, 1))
  rng = np.random.default_rng(4)
  a = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
  b = rng.integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
  b[3] = a[3]
  sa, sb = mesh_lib.shard_batch((a, b), mesh)
  for fn, want in ((metrics.mse, skimage.metrics.mean_squared_error),
                   (lambda x, y: metrics.psnr(x, y, data_range=255.0),
                    lambda x, y: skimage.metrics.peak_signal_noise_ratio(x, y, data_range=255))):
    got = fn(sa, sb)
    assert len(got.sharding.device_set) == mesh.size
    with np.errstate(divide='ignore'):
      np.testing.assert_allclose(np.asarray(got), [want(x, y) for x, y in zip(a, b)], rtol=1e-6)
