"""FID on ViT pre-logits for GAN training (gan_jax.fid_vit), against independent references."""

import jax
import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage

from gan_jax import fid_vit
from vision_core.errors import UserInputError

SHIPPED_VIT = 'vit_jax/weights/vit_cifar10/model.npz'


def _photo_crops(n: int, seed: int = 0) -> np.ndarray:
  """`n` uint8 `[32, 32, 3]` crops of skimage's photographs (halved): a 'real' image set."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  photos = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
  photos = [p[:p.shape[0] // 2 * 2, :p.shape[1] // 2 * 2].reshape(
      p.shape[0] // 2, 2, p.shape[1] // 2, 2, 3).mean((1, 3)).astype(np.uint8) for p in photos]
  rng = np.random.default_rng(seed)
  crops = []
  for i in range(n):
    p = photos[i % len(photos)]
    top, left = rng.integers(0, p.shape[0] - 32), rng.integers(0, p.shape[1] - 32)
    crops.append(p[top:top + 32, left:left + 32])
  return np.stack(crops)


@pytest.fixture(scope='module')
def vit_fid():
  import jax  # pylint: disable=g-import-not-at-top
  from vision_core import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh(devices=jax.devices()[:2])
  return fid_vit.VitFid(SHIPPED_VIT, mesh=mesh, batch_size=64)  # 160 images: last padded


@pytest.fixture(scope='module')
def real():
  # 160: more images than the 128 features (a full-rank covariance for the reference's
  # sqrtm). The ViT's passes over 300 images were most of these tests' time; the margins
  # checked below stay wide (FID of the halves 6.3 against 146 to noise and 84 to bars;
  # 3.6, 146 and 83 at 300 images).
  return _photo_crops(160)


def test_grey_input_repeated_and_resized_like_scipy():
  grey = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1)).astype(np.uint8)
  out = np.asarray(fid_vit.to_vit_input(grey, resolution=32))
  # Half-pixel-centred bilinear with edge clamping is scipy's grid_mode zoom, mode 'nearest'.
  expected = np.stack([scipy.ndimage.zoom(g[..., 0].astype(np.float64), 32 / 28, order=1,
                                          grid_mode=True, mode='nearest') for g in grey])
  expected = np.clip(np.round(expected), 0, 255).astype(np.uint8)
  assert out.shape == (3, 32, 32, 3) and out.dtype == np.uint8
  for c in range(3):
    np.testing.assert_allclose(out[..., c], expected, atol=1)  # ties may round either way
  rgb = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
  np.testing.assert_array_equal(fid_vit.to_vit_input(rgb, resolution=32), rgb)


def test_fid_matches_independent_numpy_scipy(vit_fid, real):
  noise = np.random.default_rng(5).integers(0, 256, real.shape).astype(np.uint8)
  ours = vit_fid.fid(vit_fid.stats(real), vit_fid.stats(noise))
  # Independent: the ViT applied directly to the whole set, numpy statistics, scipy sqrtm.
  model, params = vit_fid.classifier.model, vit_fid.classifier.params
  # Jitted (op by op, each op compiled afresh took most of this test's time).
  apply = jax.jit(lambda x: model.apply({'params': params}, x, train=False,
                                        return_prelogits=True))
  feats = lambda x: np.asarray(apply((x.astype(np.float32) - 127.5) / 127.5), np.float64)
  a, b = feats(real), feats(noise)
  assert a.shape == (160, 128)
  ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
  expected = (np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca) + np.trace(cb)
              - 2 * np.trace(np.real(scipy.linalg.sqrtm(ca @ cb))))
  assert ours == pytest.approx(expected, rel=1e-4)


def test_fid_zero_against_itself_larger_against_noise(vit_fid, real):
  stats = vit_fid.stats(real)
  scale = np.trace(stats.cov)
  assert vit_fid.fid(stats, stats) < 1e-6 * scale
  halves = vit_fid.fid(vit_fid.stats(real[:80]), vit_fid.stats(real[80:]))
  noise = np.random.default_rng(5).integers(0, 256, real.shape).astype(np.uint8)
  to_noise = vit_fid.fid(stats, vit_fid.stats(noise))
  grey_bars = np.zeros((160, 28, 28, 1), np.uint8)  # MNIST-like grey input: resized, RGB
  for i, image in enumerate(grey_bars):
    image[4 + i % 9:24, 10 + i % 5:14 + i % 5] = 255
  to_bars = vit_fid.fid(stats, vit_fid.stats(grey_bars))
  assert 5 * halves < to_noise and 5 * halves < to_bars, (halves, to_noise, to_bars)


def test_real_stats_cached_by_dataset_and_checkpoint(vit_fid, real, tmp_path):
  calls = []
  def load():
    calls.append(1)
    return real[:100]
  dataset = {'path': '/data/x', 'split': 'train', 'samples': 100}
  first, path, cached = vit_fid.real_stats(load, cache_dir=str(tmp_path), dataset=dataset)
  assert not cached and calls == [1] and path.startswith(str(tmp_path))
  def must_not_load():
    raise AssertionError('real images loaded although cached statistics exist')
  again, path2, cached = vit_fid.real_stats(must_not_load, cache_dir=str(tmp_path),
                                            dataset=dataset)
  assert cached and path2 == path and again.count == 100
  np.testing.assert_array_equal(again.mean, first.mean)
  np.testing.assert_allclose(again.cov, first.cov, rtol=1e-12)
  _, path3, cached = vit_fid.real_stats(load, cache_dir=str(tmp_path),
                                        dataset={**dataset, 'split': 'test'})
  assert not cached and path3 != path and calls == [1, 1]
  (tmp_path / 'broken').mkdir()
  bad = tmp_path / 'broken' / path.split('/')[-1]
  bad.write_bytes(b'not an npz')
  with pytest.raises(UserInputError, match='broken.*unreadable.*delete the file'):
    vit_fid.real_stats(must_not_load, cache_dir=str(tmp_path / 'broken'), dataset=dataset)


def test_missing_checkpoint_names_the_path(tmp_path):
  missing = str(tmp_path / 'no_vit' / 'model.npz')
  with pytest.raises(UserInputError, match=f'config.fid_vit_checkpoint: {missing} does not '
                     'exist'):
    fid_vit.VitFid(missing)
