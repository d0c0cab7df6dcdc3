"""Bad inputs to SSIM, MS-SSIM, PSNR and the FID helpers: a clear UserInputError, no NaN."""

import jax.numpy as jnp
import numpy as np
import pytest
import skimage.metrics

from vision_core.errors import UserInputError
from vit_jax import metrics


def _pair(dtype=np.uint8, size=24):
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (2, size, size, 3)).astype(dtype)
  b = np.clip(a.astype(int) + rng.integers(-9, 10, a.shape), 0, 255).astype(dtype)
  return a, b


@pytest.mark.parametrize('fn,size', [(metrics.ssim, 24), (metrics.ms_ssim, 176),
                                     (metrics.psnr, 24)])
def test_data_range_far_too_small_for_the_values(fn, size):
  a, b = _pair(size=size)
  # uint8 levels scored with data_range=1 gave SSIM ~0.01 without complaint.
  with pytest.raises(UserInputError, match=r'span \[0, 255\].*data_range=1'):
    fn(a, b, data_range=1.0)
  with pytest.raises(UserInputError, match='data_range=1'):  # JAX arrays: checked on device
    fn(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), data_range=1.0)
  # A small overshoot of the range (an unclipped reconstruction) is still scored.
  af = a / 255.0
  fn(af, af * 1.02 - 0.01, data_range=1.0)


def test_correct_data_range_still_matches_skimage():
  a, b = _pair()
  want = [skimage.metrics.structural_similarity(
      x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
      channel_axis=-1) for x, y in zip(a, b)]
  np.testing.assert_allclose(np.asarray(metrics.ssim(a, b, data_range=255.0)), want,
                             atol=1e-5)


@pytest.mark.parametrize('fn', [metrics.ssim, metrics.psnr])
@pytest.mark.parametrize('data_range', [True, '255'])
def test_non_numeric_data_range_is_refused(fn, data_range):
  a, b = _pair()
  with pytest.raises(UserInputError, match=f'data_range must be a number, got {data_range!r}'):
    fn(a, b, data_range=data_range)


@pytest.mark.parametrize('fn', [metrics.ssim, metrics.mse, metrics.pixel_row_fid])
def test_images_without_channels_are_refused(fn):
  a, _ = _pair()
  with pytest.raises(UserInputError, match='no channels'):
    fn(a[..., :0], a[..., :0])  # SSIM returned NaN, pixel_row_fid 0


def test_non_numeric_features_are_refused():
  with pytest.raises(UserInputError, match='GaussianStats.update: features must be real'):
    metrics.GaussianStats().update(np.array([['a', 'b']]))


def test_bfloat16_images_are_scored_like_their_float32_values():
  """A model computing in bf16 hands back bf16 images; they are real numbers (numpy's
  np.number does not know ml_dtypes' bfloat16, which once refused them)."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.integers(0, 256, (2, 16, 16, 3)), jnp.bfloat16)
  b = jnp.asarray(rng.integers(0, 256, (2, 16, 16, 3)), jnp.bfloat16)
  a32, b32 = a.astype(jnp.float32), b.astype(jnp.float32)
  np.testing.assert_allclose(metrics.mse(a, b), metrics.mse(a32, b32), rtol=1e-6)
  np.testing.assert_allclose(metrics.psnr(a, b, data_range=255.0),
                             metrics.psnr(a32, b32, data_range=255.0), rtol=1e-6)
  np.testing.assert_allclose(metrics.ssim(a, b, data_range=255.0),
                             metrics.ssim(a32, b32, data_range=255.0), rtol=1e-4, atol=1e-5)
  with pytest.raises(UserInputError, match='real numbers'):
    metrics.mse(np.ones((1, 8, 8, 3), bool), np.ones((1, 8, 8, 3), bool))


def test_nested_lists_and_torch_tensors_are_scored_as_arrays():
  """Array-likes used to reach jit as pytrees of scalars (AttributeError / TypeError deep in
  JAX), and torch tensors failed on their dtype ('Cannot interpret torch.uint8')."""
  torch = pytest.importorskip('torch')
  a, b = _pair(np.float64)
  a, b = a / 255, b / 255
  want_mse = [skimage.metrics.mean_squared_error(x, y) for x, y in zip(a, b)]
  want_ssim = [skimage.metrics.structural_similarity(
      x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0,
      channel_axis=-1) for x, y in zip(a, b)]
  for convert in (lambda x: x.tolist(), torch.from_numpy):
    np.testing.assert_allclose(metrics.mse(convert(a), convert(b)), want_mse, rtol=1e-6)
    np.testing.assert_allclose(metrics.ssim(convert(a), convert(b), 1.0), want_ssim, atol=1e-5)
    np.testing.assert_allclose(metrics.psnr(convert(a), convert(b), data_range=1.0),
                               10 * np.log10(1 / np.asarray(want_mse)), atol=1e-4)
  with pytest.raises(UserInputError, match='ssim: b must be a numpy or JAX array'):
    metrics.ssim(a, [[1, 2], [3]], 1.0)  # ragged
  with pytest.raises(UserInputError, match='mse: a must be a numpy or JAX array'):
    metrics.mse(torch.from_numpy(a).requires_grad_(), b)


def test_channels_first_batch_gets_the_layout_hint():
  """[B, C, H, W] batches (torch's layout) were told only that their 3x64 images are small."""
  a = np.random.default_rng(0).integers(0, 256, (2, 3, 64, 64)).astype(np.uint8)
  for fn in (metrics.ssim, metrics.ms_ssim):
    with pytest.raises(UserInputError, match=r'too small; .* \(channels first, as PyTorch '
                       r'stores them\? x\.permute\(0, 2, 3, 1\)'):
      fn(a, a)
  np.testing.assert_allclose(metrics.ssim(np.moveaxis(a, 1, -1), np.moveaxis(a, 1, -1)), 1.0,
                             atol=1e-6)


def test_grey_batch_without_channel_axis_gets_the_channel_hint():
  """A [B, H, W] grey batch was told 'a single image? add a batch axis: x[None]', which makes
  it one image of W channels and H pixels high: SSIM then scored it without complaint."""
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (12, 32, 32)).astype(np.uint8)
  b = np.clip(a + rng.integers(-20, 21, a.shape), 0, 255).astype(np.uint8)
  with pytest.raises(UserInputError, match=r'grey images\? add a channel axis: x\[\.\.\., None\]'):
    metrics.ssim(a, b)
  with pytest.raises(UserInputError, match=r'single grey image\? x\[None, \.\.\., None\]'):
    metrics.mse(a[0], b[0])
  with pytest.raises(UserInputError, match=r'single image\? add a batch axis'):
    metrics.psnr(a[..., None][0], b[..., None][0])
  # The metrics that take one batch (vision_core.images.check_batch) give the same hints.
  with pytest.raises(UserInputError, match=r'grey images\? add a channel axis: x\[\.\.\., None\]'):
    metrics.brisque_features(a)
  # Following the hint gives scikit-image's grey SSIM image by image.
  want = [skimage.metrics.structural_similarity(
      x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
          for x, y in zip(a, b)]
  np.testing.assert_allclose(metrics.ssim(a[..., None], b[..., None]), want, atol=1e-5)
