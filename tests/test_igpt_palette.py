"""Colour palette: mini-batch k-means against scipy, quantisation against brute force, files."""

import numpy as np
import pytest
import skimage.data
from scipy.cluster import vq

from igpt_jax import palette
from vision_core.errors import UserInputError


def inertia(x, centers):
  d = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
  return d.min(1).sum()


def test_recovers_separated_clusters():
  rng = np.random.default_rng(0)
  truth = rng.uniform(-0.9, 0.9, (16, 3)).astype(np.float32)
  truth = truth[np.argsort(truth[:, 0])]
  x = (truth[rng.integers(0, 16, 40_000)] + rng.normal(0, 0.01, (40_000, 3))).astype(np.float32)
  centers = palette.fit_palette(x, num_clusters=16, steps=100, batch_size=2048)
  assert centers.shape == (16, 3) and centers.dtype == np.float32
  # Every true centre has a fitted one within noise level.
  d = np.sqrt(((truth[:, None] - centers[None]) ** 2).sum(-1)).min(1)
  assert d.max() < 0.02, d


def test_inertia_close_to_scipy_full_kmeans_on_a_photo():
  pixels = skimage.data.astronaut()[::4, ::4].reshape(-1, 3)  # 16,384 real pixels.
  x = pixels.astype(np.float32) / 127.5 - 1
  ours = palette.fit_palette(pixels, num_clusters=64, steps=200, batch_size=4096)
  ref, _ = vq.kmeans2(x.astype(np.float64), 64, minit='++', iter=30, seed=0)
  ours_inertia, ref_inertia = inertia(x, ours), inertia(x, ref)
  assert ours_inertia < 1.15 * ref_inertia, (ours_inertia, ref_inertia)
  # And far better than 64 random pixels.
  rand = x[np.random.default_rng(1).choice(len(x), 64, replace=False)]
  assert ours_inertia < 0.7 * inertia(x, rand)


def test_quantize_is_the_nearest_centre_and_dequantize_inverts_centres():
  rng = np.random.default_rng(2)
  centers = rng.uniform(-1, 1, (512, 3)).astype(np.float32)
  images = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
  tokens = np.asarray(palette.quantize(images, centers))
  assert tokens.shape == (3, 64)
  x = images.reshape(3, 64, 3).astype(np.float64) / 127.5 - 1
  brute = ((x[..., None, :] - centers[None, None].astype(np.float64)) ** 2).sum(-1).argmin(-1)
  np.testing.assert_array_equal(tokens, brute)
  out = palette.dequantize(tokens, centers)
  assert out.shape == (3, 8, 8, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out.reshape(3, 64, 3),
                                np.rint(127.5 * (centers[brute] + 1)).astype(np.uint8))
  # Quantising a dequantised image changes nothing.
  np.testing.assert_array_equal(palette.quantize(out, centers), tokens)


def test_pixel_dtypes_other_than_uint8_are_scaled_or_refused():
  rng = np.random.default_rng(4)
  centers = rng.uniform(-1, 1, (512, 3)).astype(np.float32)
  images = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  x = images.reshape(2, 16, 3).astype(np.float64) / 127.5 - 1
  brute = ((x[..., None, :] - centers.astype(np.float64)) ** 2).sum(-1).argmin(-1)
  # Integers in [0, 255] of any width are pixels (they were taken as [-1, 1] floats: one
  # token for the whole image).
  for dtype in (np.int64, np.int32, np.uint16):
    np.testing.assert_array_equal(palette.quantize(images.astype(dtype), centers), brute)
  np.testing.assert_array_equal(palette.quantize(x.reshape(2, 4, 4, 3), centers), brute)
  for bad, message in [(images.astype(np.float32), r'float pixels must be in \[-1, 1\]'),
                       (images.astype(np.int32) + 200, r'integer pixels must be in \[0, 255\]'),
                       (images > 100, 'expected uint8 pixels or floats')]:
    with pytest.raises(UserInputError, match=message):
      palette.quantize(bad, centers)
    with pytest.raises(UserInputError, match=message):
      palette.fit_palette(bad, num_clusters=4, steps=1)
  with pytest.raises(UserInputError, match='expected integer palette indices'):
    palette.dequantize(brute.astype(np.float32), centers)


def test_openai_style_file_round_trip_and_bad_files(tmp_path):
  centers = np.random.default_rng(3).uniform(-1, 1, (512, 3)).astype(np.float32)
  np.save(tmp_path / 'kmeans_centers.npy', centers)  # As OpenAI's file is stored.
  np.testing.assert_array_equal(palette.load_palette(tmp_path / 'kmeans_centers.npy',
                                                     num_clusters=512), centers)
  palette.save_palette(tmp_path / 'ours.npy', centers)
  np.testing.assert_array_equal(palette.load_palette(tmp_path / 'ours.npy'), centers)
  with pytest.raises(UserInputError, match='refusing to overwrite'):
    palette.save_palette(tmp_path / 'ours.npy', centers)

  np.save(tmp_path / 'wrong.npy', centers[:, :2])
  with pytest.raises(UserInputError, match=r'wrong.npy: expected palette centres of shape '
                     r'\[512, 3\].*found shape \(512, 2\)'):
    palette.load_palette(tmp_path / 'wrong.npy', num_clusters=512)
  np.save(tmp_path / 'few.npy', centers[:100])
  with pytest.raises(UserInputError, match=r'found shape \(100, 3\)'):
    palette.load_palette(tmp_path / 'few.npy', num_clusters=512)
  np.save(tmp_path / 'pickled.npy', np.array([{'a': 1}], dtype=object), allow_pickle=True)
  with pytest.raises(UserInputError, match='pickled.npy: not a plain numeric'):
    palette.load_palette(tmp_path / 'pickled.npy')
  np.save(tmp_path / 'range.npy', centers * 200)
  with pytest.raises(UserInputError, match=r'in \[-1, 1\]'):
    palette.load_palette(tmp_path / 'range.npy')
  with pytest.raises(UserInputError, match=r'expected \[\.\.\., H, W, 3\]'):
    palette.quantize(np.zeros((4, 4), np.uint8), centers)
  with pytest.raises(UserInputError, match=r'values must be in \[0, 512\)'):
    palette.dequantize(np.array([[0, 600, 1, 2]]), centers)


def test_hf_preprocessor_config_clusters_give_hf_image_processor_tokens(tmp_path):
  """An HF user's palette is the `clusters` of imagegpt-*/preprocessor_config.json, written
  by transformers' ImageGPTImageProcessor; it loads here and codes images as HF's does."""
  transformers = pytest.importorskip('transformers')
  from PIL import Image  # pylint: disable=g-import-not-at-top
  centers = np.random.default_rng(9).uniform(-1, 1, (512, 3)).astype(np.float32)
  processor = transformers.ImageGPTImageProcessor(clusters=centers,
                                                  size={'height': 16, 'width': 16})
  processor.save_pretrained(tmp_path / 'hf')
  loaded = palette.load_palette(tmp_path / 'hf' / 'preprocessor_config.json', num_clusters=512)
  np.testing.assert_array_equal(loaded, centers)
  image = skimage.data.astronaut()[::32, ::32]  # 16x16: HF's resize keeps it as is.
  expected = processor(images=Image.fromarray(image), return_tensors='np')['input_ids']
  np.testing.assert_array_equal(palette.quantize(image[None], loaded), expected)
  (tmp_path / 'bad.json').write_text('{"size": 32}')
  with pytest.raises(UserInputError, match=r'bad.json: no "clusters" entry'):
    palette.load_palette(tmp_path / 'bad.json')
