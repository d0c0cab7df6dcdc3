"""SSIM, MS-SSIM, MSE and PSNR against scikit-image and an independent numpy/scipy MS-SSIM."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
import scipy.signal
import skimage.data
import skimage.metrics
from PIL import Image

from vision_core import mesh as mesh_lib
from vision_core.errors import UserInputError
from vit_jax import metrics


def _jpeg(image, quality):
  buf = io.BytesIO()
  Image.fromarray(image.squeeze()).save(buf, format='JPEG', quality=quality)
  out = np.asarray(Image.open(io.BytesIO(buf.getvalue())))
  return out.reshape(image.shape)


def _blur(image, sigma):
  out = scipy.ndimage.gaussian_filter(image.astype(np.float64), (sigma, sigma, 0))
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def _images():
  """skimage.data images ([H, W, C] uint8), colour and grey, square and not."""
  return {
      'astronaut': skimage.data.astronaut(),
      'camera': skimage.data.camera()[..., None],
      'chelsea': skimage.data.chelsea(),
      'coffee': skimage.data.coffee()[:301, :417],  # odd sizes
  }


def _pairs():
  for name, image in _images().items():
    yield f'{name}-blur', image, _blur(image, 2.0)
    yield f'{name}-jpeg', image, _jpeg(image, 10)


@pytest.mark.parametrize('name,a,b', list(_pairs()), ids=lambda v: v if isinstance(v, str) else '')
def test_ssim_psnr_mse_match_skimage(name, a, b):
  del name
  want_ssim = skimage.metrics.structural_similarity(
      a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
      channel_axis=-1)
  want_mse = skimage.metrics.mean_squared_error(a, b)
  want_psnr = skimage.metrics.peak_signal_noise_ratio(a, b, data_range=255)
  got_ssim = np.asarray(metrics.ssim(a[None], b[None], data_range=255.0))
  got_mse = np.asarray(metrics.mse(a[None], b[None]))
  got_psnr = np.asarray(metrics.psnr(a[None], b[None], data_range=255.0))
  assert got_ssim.shape == (1,)
  assert abs(got_ssim[0] - want_ssim) < 1e-5
  np.testing.assert_allclose(got_mse[0], want_mse, rtol=1e-5)
  np.testing.assert_allclose(got_psnr[0], want_psnr, rtol=1e-5)


def test_float_images_in_unit_range_match_skimage():
  a = skimage.data.astronaut()[:128, :160].astype(np.float64) / 255
  b = np.clip(a + np.random.default_rng(0).normal(0, 0.05, a.shape), 0, 1)
  want = skimage.metrics.structural_similarity(
      a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
      channel_axis=-1)
  got = metrics.ssim(a[None], b[None], data_range=1.0)
  assert abs(float(got[0]) - want) < 1e-5
  np.testing.assert_allclose(
      metrics.psnr(a[None], b[None], data_range=1.0)[0],
      skimage.metrics.peak_signal_noise_ratio(a, b, data_range=1.0), rtol=1e-5)


def test_batch_gives_one_value_per_image_in_order():
  a = skimage.data.astronaut()[:96, :96]
  batch_a = np.stack([a, a, a])
  batch_b = np.stack([a, _blur(a, 1.0), _jpeg(a, 5)])
  got = np.asarray(metrics.ssim(batch_a, batch_b))
  assert got.shape == (3,)
  assert got[0] == pytest.approx(1.0, abs=1e-6)
  for i in (1, 2):
    assert got[i] == pytest.approx(float(metrics.ssim(batch_a[i:i + 1], batch_b[i:i + 1])[0]),
                                   abs=1e-6)
  assert np.isinf(np.asarray(metrics.psnr(batch_a, batch_b, data_range=255))[0])


def _reference_ms_ssim(a, b, data_range=255.0):
  """Independent MS-SSIM: 2-D FFT convolution in float64, per channel, per Wang et al. 2003."""
  x = np.arange(11) - 5.0
  g = np.exp(-x**2 / (2 * 1.5**2))
  window = np.outer(g, g) / np.outer(g, g).sum()
  weights = np.array([0.0448, 0.2856, 0.3001, 0.2363, 0.1333])
  c1, c2 = (0.01 * data_range)**2, (0.03 * data_range)**2
  scores = []
  for ch in range(a.shape[-1]):
    x1, x2 = a[..., ch].astype(np.float64), b[..., ch].astype(np.float64)
    factors = []
    for scale in range(5):
      f = lambda m: scipy.signal.fftconvolve(m, window, mode='valid')  # pylint: disable=cell-var-from-loop
      m1, m2 = f(x1), f(x2)
      s11, s22, s12 = f(x1 * x1) - m1**2, f(x2 * x2) - m2**2, f(x1 * x2) - m1 * m2
      cs = (2 * s12 + c2) / (s11 + s22 + c2)
      if scale < 4:
        factors.append(max(cs.mean(), 0.0))
        h, w = x1.shape[0] // 2 * 2, x1.shape[1] // 2 * 2
        x1 = x1[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
        x2 = x2[:h, :w].reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
      else:
        lum = (2 * m1 * m2 + c1) / (m1**2 + m2**2 + c1)
        factors.append(max((lum * cs).mean(), 0.0))
    scores.append(np.prod(np.array(factors)**weights))
  return float(np.mean(scores))


@pytest.mark.parametrize('degrade', ['blur', 'jpeg'])
def test_ms_ssim_matches_independent_implementation(degrade):
  # Colour at the sharded test's size (176 x 184, near the smallest whose 5th scale still
  # fits the 11x11 window), so that test reuses this compiled program; grey at odd sizes.
  images = [skimage.data.astronaut()[:176, :184], skimage.data.camera()[:199, :377, None]]
  for a in images:
    b = _blur(a, 1.5) if degrade == 'blur' else _jpeg(a, 15)
    got = float(metrics.ms_ssim(a[None], b[None], data_range=255.0)[0])
    assert got == pytest.approx(_reference_ms_ssim(a, b), abs=1e-5)
  same = float(metrics.ms_ssim(images[0][None], images[0][None])[0])
  assert same == pytest.approx(1.0, abs=1e-6)


# 'jax.make_mesh': a batch the user placed on jax.make_mesh's default mesh (Explicit axes,
# where an array's sharding is part of its type) is scored as one placed by us.
@pytest.mark.parametrize('placed_by', ['shard_batch', 'jax.make_mesh'])
def test_sharded_over_eight_devices_equals_single_device(placed_by):
  rng = np.random.default_rng(1)
  base = skimage.data.astronaut()[:176, :184]
  a = np.stack([np.roll(base, 7 * i, axis=1) for i in range(8)])
  b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255).astype(np.uint8)
  if placed_by == 'shard_batch':
    mesh = mesh_lib.make_mesh((-1, 1))
    assert mesh.shape['data'] == 8
    sa, sb = mesh_lib.shard_batch((a, b), mesh)
  else:
    mesh = jax.make_mesh((4, 2), ('data', 'model'),
                         axis_types=(jax.sharding.AxisType.Explicit,) * 2)
    sa, sb = (jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
        'data'))) for x in (a, b))
  for fn, kwargs in ((metrics.ssim, {}), (metrics.ms_ssim, {}), (metrics.mse, {}),
                     (metrics.psnr, {'data_range': 255.0})):
    sharded = fn(sa, sb, **kwargs)
    assert len(sharded.sharding.device_set) == 8, fn.__name__
    single = np.concatenate([np.asarray(fn(a[i:i + 1], b[i:i + 1], **kwargs)) for i in range(8)])
    np.testing.assert_allclose(np.asarray(sharded), single, rtol=1e-6, atol=1e-7,
                               err_msg=fn.__name__)


@pytest.mark.parametrize('fn', [metrics.ssim, metrics.ms_ssim, metrics.mse,
                                lambda a, b: metrics.psnr(a, b, data_range=255.0)])
def test_bad_input_is_a_clear_error(fn):
  a = np.zeros((2, 180, 180, 3), np.uint8)
  with pytest.raises(UserInputError, match=r'4-D batch.*add a batch axis'):
    fn(a[0], a[0])
  with pytest.raises(UserInputError, match='channel counts differ.*3 channels.*4'):
    fn(a, np.zeros((2, 180, 180, 4), np.uint8))
  with pytest.raises(UserInputError, match='same shape'):
    fn(a, np.zeros((2, 180, 184, 3), np.uint8))
  nan = a.astype(np.float32)
  nan[1, 3, 4, 0] = np.nan
  with pytest.raises(UserInputError, match='b contains NaN'):
    fn(a, nan)  # numpy: caught on the host
  if fn is not metrics.ms_ssim:  # (a device-side check of MS-SSIM would need 176x176 images)
    with pytest.raises(UserInputError, match='a contains NaN'):
      fn(jnp.asarray(nan[:, :12, :12]), jnp.asarray(a[:, :12, :12], jnp.float32))  # device
  with pytest.raises(UserInputError, match='empty batch'):
    fn(a[:0], a[:0])


def test_bad_data_range_and_small_images():
  a = np.zeros((1, 64, 64, 1), np.float32)
  with pytest.raises(UserInputError, match='data_range'):
    metrics.ssim(a, a, data_range=0)
  with pytest.raises(UserInputError, match='data_range'):
    metrics.psnr(a, a, data_range='max')
  with pytest.raises(UserInputError, match='pass data_range for float32'):
    metrics.psnr(a, a)  # only uint8 has a default
  with pytest.raises(UserInputError, match='at least 176'):
    metrics.ms_ssim(a, a)
  with pytest.raises(UserInputError, match='at least 11'):
    metrics.ssim(a[:, :10], a[:, :10])
