"""The compress perceptual term: which ViT `--vit-checkpoint` loads as, and at what size."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vit_jax
from gan_jax import compress, perceptual
from vit_jax import checkpoint as vit_checkpoint
from vit_jax import models_vit
from vit_jax.configs import models


def _images(n, size, seed=0):
  rng = np.random.default_rng(seed)
  return jnp.asarray(rng.uniform(-1, 1, (n, size, size, 3)), jnp.float32)


def test_shipped_vit_loads_from_its_model_json():
  # Before: the architecture was always the zoo's ViT-B_16 at 224 px, so the only ViT the
  # project ships (and every vit_jax.main checkpoint) failed with a shape mismatch.
  features = perceptual.load_vit_features('', vit_jax.SHIPPED_CIFAR10_VIT)
  # Reference: the model and params as the study's loader reads them (vit_jax.predict).
  from gan_jax import study_scores
  ref = study_scores.load_classifier(vit_jax.SHIPPED_CIFAR10_VIT)
  assert ref.resolution == 32
  x = _images(3, 32)
  # Op by op, unlike the test below: the two passes share each op's compilation, and the
  # shipped ViT's six layers compiled as one program each took longer.
  expected = ref.model.apply({'params': ref.params}, x, train=False, return_prelogits=True)
  np.testing.assert_allclose(np.asarray(features(x)), np.asarray(expected), rtol=1e-5,
                             atol=1e-5)


def test_zoo_checkpoint_runs_at_the_size_its_position_embeddings_hold(tmp_path):
  # An official fine-tuned checkpoint (ViT-B_16 at 384 px) has no model.json: the size must
  # come from its position embeddings, not a fixed 224.
  module = models_vit.VisionTransformer(num_classes=5, **models.get_model_config('testing'))
  params = jax.jit(module.init)(jax.random.PRNGKey(1), jnp.zeros((1, 64, 64, 3)))['params']
  path = tmp_path / 'vit.npz'
  vit_checkpoint.save(path, jax.device_get(params))
  features = perceptual.load_vit_features('testing', path)
  x = _images(2, 28)
  # Jitted, as the search traces the features: op by op, the init and the two passes at
  # 64 px compiled every op afresh, twice the time of these programs.
  expected = jax.jit(lambda v: module.apply(
      {'params': params}, jax.image.resize(v, (2, 64, 64, 3), 'bilinear'), train=False,
      return_prelogits=True))(x)
  np.testing.assert_allclose(np.asarray(jax.jit(features)(x)), np.asarray(expected),
                             rtol=1e-5, atol=1e-5)


def test_compress_cli_takes_the_architecture_from_model_json_by_default():
  # (A whole compress run with the ViT term compiles for about a minute on a 2-core CPU.)
  args = compress._parser().parse_args(['x.png', '-o', 'out', '--vit-checkpoint', 'v.npz'])
  assert not args.vit_model


def test_wrong_model_name_still_names_the_mismatch():
  with pytest.raises(ValueError, match='as ViT-B_16'):
    perceptual.load_vit_features('ViT-B_16', vit_jax.SHIPPED_CIFAR10_VIT)
