"""ViT-Score: the study's top-k overlap, its weighted variant and the pre-logit cosine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vision_core.errors import UserInputError
from vision_core.mesh import make_mesh
from vit_jax import models_vit
from vit_jax.configs.models import get_model_config
from vit_jax.metrics.vit_score import (cosine_similarity, top_k_overlap, vit_score, vit_scores,
                                       weighted_top_k_overlap)

NUM_CLASSES = 20


@pytest.fixture(scope='module')
def tiny_vit():
  model = models_vit.VisionTransformer(num_classes=NUM_CLASSES, **get_model_config('testing'))
  # Jitted (as the forward passes below): op by op, each op compiles alone.
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params']
  # The head is zero-initialised (all logits tie); give it random weights.
  params = dict(params)
  params['head'] = {'kernel': jax.random.normal(jax.random.PRNGKey(1), (10, NUM_CLASSES)),
                    'bias': jnp.zeros(NUM_CLASSES)}
  return model, params


def _images(seed, n=4):
  return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def test_identical_images_score_one(tiny_vit):
  model, params = tiny_vit
  x = _images(0)
  scores = vit_scores(x, x, model, params, k=5)
  for name in ('top_k', 'weighted', 'cosine'):
    np.testing.assert_allclose(scores[name], 1.0, atol=1e-6, err_msg=name)
  np.testing.assert_allclose(vit_score(x, x, model, params, k=5), 1.0)


def test_different_images_score_below_one_and_match_logits(tiny_vit):
  model, params = tiny_vit
  a, b = _images(1), _images(2)
  scores = vit_scores(a, b, model, params, k=5)
  assert scores['top_k'].min() < 1.0
  # Against an independent numpy computation from the model's logits.
  to_model = lambda x: (x.astype(np.float32) - 127.5) / 127.5
  logits = jax.jit(lambda x: model.apply({'params': params}, x))
  la, lb = np.asarray(logits(to_model(a))), np.asarray(logits(to_model(b)))
  want = [len(set(np.argsort(-x)[:5]) & set(np.argsort(-y)[:5])) / 5 for x, y in zip(la, lb)]
  np.testing.assert_allclose(scores['top_k'], want)


def test_bad_k_and_shapes_are_rejected(tiny_vit):
  model, params = tiny_vit
  x = _images(0)
  with pytest.raises(UserInputError, match=r'1 <= k <= 20'):
    vit_score(x, x, model, params, k=NUM_CLASSES + 1)
  with pytest.raises(UserInputError, match='k=0'):
    vit_score(x, x, model, params, k=0)
  with pytest.raises(UserInputError, match='must match'):
    vit_score(x, x[:, :16], model, params, k=5)
  with pytest.raises(UserInputError, match='channels'):
    vit_score(x[..., :1], x[..., :1], model, params, k=5)
  nan = x.astype(np.float32)
  nan[0, 0, 0, 0] = np.nan
  with pytest.raises(UserInputError, match='NaN'):
    vit_score(nan, x.astype(np.float32), model, params, k=5)


def test_mixed_dtypes_are_refused(tiny_vit):
  model, params = tiny_vit
  x = _images(0)
  # A [0, 1] float reconstruction of uint8 originals was scored as a nearly black image.
  with pytest.raises(UserInputError, match='original is uint8 but reconstruction is float64'):
    vit_score(x, x / 255.0, model, params, k=5)
  np.testing.assert_allclose(vit_score(x.astype(np.float32), x.astype(np.float64), model,
                                       params, k=5), 1.0, atol=1e-6)


def test_float_images_off_the_0_255_scale_are_refused(tiny_vit):
  """The ViT sees x / 127.5 - 1, so a [0, 1] or [-1, 1] float pair scored as two black
  images: top-k agreement 1.0 whatever the pictures."""
  model, params = tiny_vit
  a, b = _images(1).astype(np.float32), _images(2).astype(np.float32)
  with pytest.raises(UserInputError, match=r'vit_score original: image 0 .*\[0, 1\] or \[-1, 1\]'):
    vit_score(a / 255, b / 255, model, params, k=5)
  with pytest.raises(UserInputError, match=r'vit_score reconstruction: .*not 0\.\.255'):
    vit_score(a, b * 257, model, params, k=5)
  with pytest.raises(UserInputError, match='reconstruction'):
    vit_score(a, jnp.asarray(b / 127.5 - 1), model, params, k=5)  # device arrays too
  np.testing.assert_allclose(vit_score(a, b, model, params, k=5),
                             vit_score(_images(1), _images(2), model, params, k=5))


def test_integer_images_beyond_8_bit_levels_are_refused(tiny_vit):
  """16-bit levels went through x / 127.5 - 1 unchecked and gave numbers (cosine 0.82
  where the 8-bit images give 0.68); the extractor for FID likewise."""
  from vit_jax.metrics import vit_extractor  # pylint: disable=g-import-not-at-top
  model, params = tiny_vit
  a, b = _images(1), _images(2)
  with pytest.raises(UserInputError, match=r'vit_score original: integer pixels must be 8-bit '
                     r'levels 0\.\.255, got values in \[0, 65535\] \(dtype uint16\)'):
    vit_score(a.astype(np.uint16) * 257, b.astype(np.uint16) * 257, model, params, k=5)
  with pytest.raises(UserInputError, match=r'vit_extractor input: .*\[-128, 127\] \(dtype int16'):
    vit_extractor(model, params)(a.astype(np.int16) - 128)
  # Wider integers holding 8-bit levels are those levels: the same scores as uint8.
  scores = vit_scores(a.astype(np.int32), jnp.asarray(b, jnp.int32), model, params, k=5)
  want = vit_scores(a, b, model, params, k=5)
  for key in want:
    np.testing.assert_allclose(scores[key], want[key], atol=1e-6, err_msg=key)


def test_empty_batch_bad_sizes_and_wrong_resolution_are_clear_errors(tiny_vit):
  model, params = tiny_vit
  x = _images(0)
  with pytest.raises(UserInputError, match='empty batch'):
    vit_score(x[:0], x[:0], model, params, k=5)
  with pytest.raises(UserInputError, match='k=True'):
    vit_score(x, x, model, params, k=True)
  with pytest.raises(UserInputError, match='batch_size'):
    vit_score(x, x, model, params, k=5, batch_size=0)
  with pytest.raises(UserInputError, match='image_size'):
    vit_score(x, x, model, params, k=5, image_size=0)
  # The model was built for 32x32: other sizes need image_size=, and the error says so.
  for small in (x[:, :16, :16], x[:, :, :24]):
    with pytest.raises(UserInputError, match=r'position embeddings; pass image_size='):
      vit_score(small, small, model, params, k=5)
  np.testing.assert_allclose(vit_score(x[:, :, :24], x[:, :, :24], model, params, k=5,
                                       image_size=32), 1.0)


def test_chance_level_on_random_logits():
  """Independent random logits share k/N of their top-k classes on average (0.1 here)."""
  rng = np.random.default_rng(0)
  a = jnp.asarray(rng.normal(size=(4000, 1000)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(4000, 1000)), jnp.float32)
  overlap = np.asarray(top_k_overlap(a, b, 100))
  assert abs(overlap.mean() - 0.1) < 0.003  # Std of the mean is ~0.0005.
  assert abs(np.asarray(top_k_overlap(a, b, 10)).mean() - 0.01) < 0.002


def test_top_k_and_weighted_match_numpy():
  rng = np.random.default_rng(1)
  a = rng.normal(size=(16, 50)).astype(np.float32)
  b = (a + rng.normal(scale=0.7, size=a.shape)).astype(np.float32)
  k = 10
  got = np.asarray(top_k_overlap(jnp.asarray(a), jnp.asarray(b), k))
  got_w = np.asarray(weighted_top_k_overlap(jnp.asarray(a), jnp.asarray(b), k))
  for i in range(len(a)):
    top_a = np.argsort(-a[i])[:k]
    top_b = set(np.argsort(-b[i])[:k].tolist())
    p = np.exp(a[i].astype(np.float64) - a[i].max())
    p /= p.sum()
    shared = [c for c in top_a if c in top_b]
    assert got[i] == pytest.approx(len(shared) / k)
    assert got_w[i] == pytest.approx(p[shared].sum() / p[top_a].sum(), rel=1e-5)


def test_cosine_matches_numpy():
  rng = np.random.default_rng(2)
  a, b = rng.normal(size=(2, 8, 12)).astype(np.float32)
  want = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
  np.testing.assert_allclose(cosine_similarity(jnp.asarray(a), jnp.asarray(b)), want,
                             rtol=1e-5)


def test_sharded_over_mesh_matches(tiny_vit):
  model, params = tiny_vit
  a, b = _images(3, n=5), _images(4, n=5)  # 5 pairs on an 8-device 'data' axis: padded.
  plain = vit_scores(a, b, model, params, k=5, return_prelogits=True)
  sharded = vit_scores(a, b, model, params, k=5, mesh=make_mesh(), return_prelogits=True)
  # jax.make_mesh's default (Explicit axes) is used as ours (Auto): vision_core.mesh.auto_axes.
  explicit = vit_scores(a, b, model, params, k=5, mesh=jax.make_mesh(
      (8,), ('data',), axis_types=(jax.sharding.AxisType.Explicit,)))
  assert sorted(explicit) == ['cosine', 'top_k', 'weighted']
  for name in plain:
    np.testing.assert_allclose(sharded[name], plain[name], atol=1e-5)
  for name in explicit:
    np.testing.assert_allclose(explicit[name], plain[name], atol=1e-5)
  # The pre-logits (for a FID on them): the model's own, padding rows dropped.
  prelogits = jax.jit(lambda x: model.apply({'params': params}, x, train=False,
                                            return_prelogits=True))
  for images, name in ((a, 'prelogits_original'), (b, 'prelogits_reconstruction')):
    want = prelogits((np.asarray(images, np.float32) - 127.5) / 127.5)
    assert plain[name].shape == sharded[name].shape == want.shape
    np.testing.assert_allclose(sharded[name], want, rtol=1e-5, atol=1e-5)


def test_a_mesh_without_a_data_axis_is_named(tiny_vit):
  from vit_jax.metrics import vit_extractor  # pylint: disable=g-import-not-at-top
  model, params = tiny_vit
  a = _images(3, n=2)
  batch_mesh = jax.make_mesh((8,), ('batch',))  # before: KeyError: 'data'
  with pytest.raises(UserInputError, match=r"mesh axes \('batch',\): expected a 'data' axis"):
    vit_scores(a, a, model, params, k=5, mesh=batch_mesh)
  with pytest.raises(UserInputError, match=r"expected a 'data' axis"):
    vit_extractor(model, params, mesh=batch_mesh)


def test_resize_to_model_resolution(tiny_vit):
  model, params = tiny_vit
  x = np.random.default_rng(5).integers(0, 256, (2, 48, 40, 3), dtype=np.uint8)
  scores = vit_scores(x, x, model, params, k=3, image_size=32)
  np.testing.assert_allclose(scores['top_k'], 1.0)
