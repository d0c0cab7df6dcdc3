"""Official `.npz` checkpoints: round trips, fine-tuning adaptation, and clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage

from tests.test_vit_model import random_params, tiny_config
from vision_core import npz
from vision_core.errors import UserInputError
from vit_jax import checkpoint, models_vit


def _model(image_size=16, num_classes=7, **kw):
  config = tiny_config(**kw)
  return models_vit.VisionTransformer(num_classes=num_classes, **config), config


def test_save_load_round_trips_every_leaf_exactly(tmp_path):
  model, _ = _model(representation_size=12, resnet_layers=(1,))
  params = random_params(model, 32)
  path = tmp_path / 'model.npz'
  checkpoint.save(path, params)
  loaded = checkpoint.load(path)
  flat_in, flat_out = npz.flatten(params), npz.flatten(loaded)
  assert flat_in.keys() == flat_out.keys()
  for key in flat_in:
    assert flat_out[key].dtype == flat_in[key].dtype
    np.testing.assert_array_equal(flat_out[key], flat_in[key], err_msg=key)


def test_save_refuses_to_overwrite(tmp_path):
  model, _ = _model()
  params = random_params(model, 16)
  path = tmp_path / 'model.npz'
  checkpoint.save(path, params)
  before = path.read_bytes()
  with pytest.raises(UserInputError, match='already exists'):
    checkpoint.save(path, params)
  assert path.read_bytes() == before
  checkpoint.save(path, params, overwrite=True)


def test_convert_pre_linen_renumbers_per_type():
  tree = {'encoderblock_0': {'LayerNorm_0': {'scale': 1}, 'MultiHeadDotProductAttention_1': {},
                             'LayerNorm_2': {'scale': 2}, 'MlpBlock_3': {'Dense_0': {}}}}
  out = checkpoint.convert_pre_linen(tree)['encoderblock_0']
  assert set(out) == {'LayerNorm_0', 'LayerNorm_1', 'MultiHeadDotProductAttention_0',
                      'MlpBlock_0'}
  assert out['LayerNorm_1'] == {'scale': 2}


@pytest.mark.parametrize('classifier', ['token', 'gap'])
def test_load_pretrained_resizes_posemb_like_scipy_zoom(tmp_path, classifier):
  old_model, config = _model(classifier=classifier)
  old = random_params(old_model, 16)  # 4x4 grid
  old['pre_logits'] = {'kernel': np.ones((32, 32), np.float32),
                       'bias': np.zeros(32, np.float32)}
  path = tmp_path / 'pretrained.npz'
  checkpoint.save(path, old)
  new_model, _ = _model(classifier=classifier, num_classes=3)
  # 28 px, a 7x7 grid. As vit_jax.train_loop passes them: zeros in a fresh model's shapes
  # (of the values, only the head's are kept; an init op by op compiled each op alone).
  shapes = jax.eval_shape(lambda: new_model.init(jax.random.PRNGKey(1),
                                                 jnp.zeros((1, 28, 28, 3)))['params'])
  init = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)
  params = checkpoint.load_pretrained(pretrained_path=path, init_params=init,
                                      model_config=config)
  posemb = params['Transformer']['posembed_input']['pos_embedding']
  old_posemb = old['Transformer']['posembed_input']['pos_embedding']
  start = 1 if classifier == 'token' else 0
  grid = old_posemb[0, start:].reshape(4, 4, -1)
  expected = scipy.ndimage.zoom(grid, (7 / 4, 7 / 4, 1), order=1).reshape(49, -1)
  assert posemb.shape == (1, 49 + start, 32)
  np.testing.assert_allclose(posemb[0, start:], expected, rtol=1e-5, atol=1e-6)
  if start:
    np.testing.assert_array_equal(posemb[0, 0], old_posemb[0, 0])
  assert 'pre_logits' not in params  # representation_size is None: drop-head variant
  np.testing.assert_array_equal(params['head']['kernel'], np.zeros((32, 3)))
  np.testing.assert_array_equal(params['embedding']['kernel'], old['embedding']['kernel'])
  # Jitted: op by op, each of the forward pass's ops compiles alone.
  logits = jax.jit(new_model.apply)({'params': params}, np.zeros((2, 28, 28, 3), np.float32))
  assert logits.shape == (2, 3)


def test_mismatched_npz_lists_every_key_with_both_shapes(tmp_path):
  model, _ = _model()
  params = random_params(model, 16)
  flat = npz.flatten(params)
  flat['embedding/kernel'] = np.zeros((4, 4, 3, 16), np.float32)
  del flat['Transformer/encoder_norm/scale']
  flat['extra/thing'] = np.zeros(3)
  path = tmp_path / 'bad.npz'
  np.savez(path, **flat)
  with pytest.raises(UserInputError) as info:
    checkpoint.load_params(path, params)
  message = str(info.value)
  assert str(path) in message and '3 mismatched keys' in message
  assert 'embedding/kernel: expected (4, 4, 3, 32), found (4, 4, 3, 16)' in message
  assert 'missing  Transformer/encoder_norm/scale' in message
  assert 'extra    extra/thing' in message


def test_pickled_npz_is_refused(tmp_path):
  path = tmp_path / 'pickled.npz'
  np.savez(path, ok=np.zeros(2), evil=np.array([{'a': 1}], dtype=object))
  with pytest.raises(UserInputError, match=r"'evil' holds pickled Python objects"):
    checkpoint.load(path)


def test_non_numeric_and_non_finite_arrays_are_refused_by_name(tmp_path):
  model, config = _model()
  params = random_params(model, 16)
  flat = npz.flatten(params)
  path = tmp_path / 'strings.npz'
  np.savez(path, **{**flat, 'embedding/kernel': np.array(['abc'])})
  # Before: "Dtype <U3 is not a valid JAX array type" from deep in JAX.
  with pytest.raises(UserInputError, match=r"strings\.npz: entry 'embedding/kernel' has dtype "
                     r'<U3; expected numeric arrays'):
    checkpoint.load(path)
  path = tmp_path / 'nan.npz'
  broken = flat['Transformer/encoder_norm/scale'].copy()
  broken[3] = np.nan
  np.savez(path, **{**flat, 'Transformer/encoder_norm/scale': broken})
  # Before: fine-tuning said "loss is nan at step 1; lower base_lr", predict printed nan%.
  init = random_params(model, 16, seed=1)  # a fresh model's shapes, which the errors need
  with pytest.raises(UserInputError, match=r"nan\.npz: 1 arrays hold NaN or infinite values "
                     r"\(e\.g\. 'Transformer/encoder_norm/scale'\)"):
    checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=config)


def test_malformed_position_embeddings_and_keys_name_the_file(tmp_path):
  model, config = _model()
  params = random_params(model, 16)
  init = random_params(model, 16, seed=1)  # a fresh model's shapes, which the errors need
  flat = npz.flatten(params)
  key = 'Transformer/posembed_input/pos_embedding'
  cases = [
      # Before: "all the input arrays must have same number of dimensions" (np.concatenate).
      ({key: flat[key][0]}, rf'2d\.npz: {key} has shape \(17, 32\), expected \[1, tokens, '
                            r'width\]'),
      # Before: "position embeddings: cannot resize ...", without the file.
      ({key: flat[key][:, :6]}, rf'2d\.npz: {key}: cannot resize a grid of 5 tokens to 16'),
      ({'Transformer': np.zeros(2)}, r"2d\.npz: key 'Transformer.*' is both an array and a "
                                    'group of arrays'),
  ]
  for change, message in cases:
    path = tmp_path / '2d.npz'
    path.unlink(missing_ok=True)
    np.savez(path, **{**flat, **change})
    with pytest.raises(UserInputError, match=message):
      checkpoint.load_pretrained(pretrained_path=path, init_params=init, model_config=config)


def test_a_file_for_another_model_lists_twenty_keys_and_says_so(tmp_path):
  model, _ = _model()
  params = random_params(model, 16)
  path = tmp_path / 'other.npz'
  np.savez(path, **{k: np.zeros(v.shape[:-1] + (v.shape[-1] + 1,), v.dtype)
                    for k, v in npz.flatten(params).items()})  # every key mis-shaped
  with pytest.raises(UserInputError) as info:
    checkpoint.load_params(path, params)
  lines = str(info.value).splitlines()
  total = len(npz.flatten(params))
  assert f'({total} mismatched keys)' in lines[0] and len(lines) == 1 + 20 + 2
  assert lines[-2] == f'  ... and {total - 20} more'
  assert lines[-1].startswith('Most keys differ: is this file for another model')


def test_missing_and_corrupt_files_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='nope.npz: no such checkpoint file'):
    checkpoint.load(tmp_path / 'nope.npz')
  bad = tmp_path / 'garbage.npz'
  bad.write_bytes(b'not a zip file at all')
  with pytest.raises(UserInputError, match='garbage.npz: not a readable .npz'):
    checkpoint.load(bad)


def test_a_resnet_stem_of_no_zoo_model_is_named_in_the_error():
  """infer_model_name names a stem with a stage count no zoo model has. (That it tells each
  registered model from its own parameter shapes is checked in test_vit_model.py's
  test_zoo_parameter_counts, on the shapes traced there: one trace of each model, ~1 s
  apiece, not two.)"""
  from vit_jax.configs.models import MODEL_CONFIGS
  images = np.zeros((1, 64, 64, 3), np.float32)
  params = dict(jax.eval_shape(lambda: models_vit.VisionTransformer(
      num_classes=10, **MODEL_CONFIGS['R26+ViT-S_32']).init(jax.random.key(0), images)[
          'params']))
  del params['block4']
  with pytest.raises(UserInputError, match=r'ResNet units per stage \(2, 2, 2\), width x1: '
                                           'no registered model'):
    checkpoint.infer_model_name(params, source='x.npz', model_arg='--model')
