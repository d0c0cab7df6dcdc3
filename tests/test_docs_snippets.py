"""The Python examples of docs/metrics.md run as written, on inputs of the shapes they name."""

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import skimage.data

from vit_jax import models_vit
from vit_jax.configs.models import get_model_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SNIPPETS = re.findall(r'^```python\n(.*?)^```', (ROOT / 'docs/metrics.md').read_text(),
                      re.S | re.M)


def _find(word):
  [snippet] = [s for s in SNIPPETS if word in s]
  return snippet


def test_each_example_has_inputs_here():
  # A new example in the guide needs its inputs below, or it would go unrun.
  assert len(SNIPPETS) == 3, [s.splitlines()[:2] for s in SNIPPETS]


def test_pixel_metrics_example():
  base = skimage.data.astronaut()[:176, :176]
  a = np.stack([np.roll(base, 9 * i, axis=1) for i in range(8)])  # 8: the test devices
  b = np.clip(a + np.random.default_rng(0).normal(0, 8, a.shape), 0, 255).astype(np.uint8)
  scope = {'a': a, 'b': b}
  exec(_find('metrics.ms_ssim'), scope)  # pylint: disable=exec-used
  assert scope['sa'].shape == a.shape and len(scope['sa'].sharding.device_set) == 8


def test_brisque_example(shared_data, monkeypatch):
  del shared_data  # the example's paths are ../shared/data/..., from the project root
  monkeypatch.chdir(ROOT)
  images = np.stack([skimage.data.camera()[:128, :128], skimage.data.coins()[:128, :128]])
  scope = {'images': images[..., None]}
  exec(_find('metrics.brisque('), scope)  # pylint: disable=exec-used
  assert scope['scores'].shape == (2,) and scope['features'].shape == (2, 36)


def test_vit_score_example():
  model = models_vit.VisionTransformer(num_classes=128, **get_model_config('testing'))
  # Compiled: eager, each op of the init compiled on its own took a third of this test.
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 224, 224, 3)))['params']
  rng = np.random.default_rng(1)
  originals = rng.integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
  scope = {'model': model, 'params': params, 'originals': originals,
           'reconstructions': originals[::-1]}
  exec(_find('metrics.vit_score('), scope)  # pylint: disable=exec-used
  assert scope['s'].shape == (2,)
  assert set(scope['all3']) == {'top_k', 'weighted', 'cosine'}
  np.testing.assert_allclose(scope['all3']['top_k'], scope['s'])

