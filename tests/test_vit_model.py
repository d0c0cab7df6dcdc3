"""The ViT family: official parameter tree, zoo sizes, and logits against a numpy forward pass."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from tests import numpy_vit
from vision_core import npz
from vision_core.errors import UserInputError
from vit_jax import checkpoint, layers, models_resnet, models_vit
from vit_jax.configs import models


def tiny_config(classifier='token', representation_size=None, resnet_layers=None, patch=4):
  config = models.vit_config('tiny', 'Ti', patch, classifier=classifier,
                             representation_size=representation_size,
                             resnet_layers=resnet_layers)
  config.hidden_size = 32
  config.transformer.mlp_dim = 48
  config.transformer.num_heads = 4
  config.transformer.num_layers = 2
  return config


def random_params(model, image_size, seed=0):
  """Init params with every leaf replaced by noise, so zero-initialised parts matter too."""
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, image_size, image_size, 3))))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(np.float32),
                      shapes['params'])


def to_pre_linen(flat):
  """Renames Linen block modules to the numbering of the released (pre-Linen) files."""
  mapping = {'LayerNorm_1': 'LayerNorm_2', 'MultiHeadDotProductAttention_0':
             'MultiHeadDotProductAttention_1', 'MlpBlock_0': 'MlpBlock_3'}
  out = {}
  for key, value in flat.items():
    parts = key.split('/')
    if len(parts) > 2 and parts[1].startswith('encoderblock_'):
      parts[2] = mapping.get(parts[2], parts[2])
    out['/'.join(parts)] = value
  return out


@pytest.mark.parametrize('classifier,rep,resnet,gelu_approximate', [
    ('token', None, None, True), ('gap', None, None, True), ('token', 24, None, True),
    ('token', None, (1, 1), True), ('token', None, None, False)])
def test_logits_match_numpy_forward_from_official_layout(tmp_path, classifier, rep, resnet,
                                                         gelu_approximate):
  config = tiny_config(classifier, rep, resnet, patch=1 if resnet else 4)
  model = models_vit.VisionTransformer(num_classes=7, gelu_approximate=gelu_approximate,
                                       **config)
  size = 32 if resnet else 16
  params = random_params(model, size)
  flat = to_pre_linen(npz.flatten(params))
  if resnet:  # Old hybrid files store GroupNorm scale/bias as [1, 1, 1, C].
    flat = {k: v.reshape(1, 1, 1, -1) if '/gn' in f'/{k}' and v.ndim == 1 else v
            for k, v in flat.items()}
  assert any('MultiHeadDotProductAttention_1' in k for k in flat)
  path = tmp_path / 'official.npz'
  np.savez(path, **flat)

  loaded = checkpoint.load_params(path, params)
  images = np.random.default_rng(1).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
  logits = model.apply({'params': loaded}, images, train=False)
  expected = numpy_vit.forward(loaded, images, num_heads=4, classifier=classifier,
                               patch=config.patches.size[0], resnet_layers=resnet,
                               gelu_approximate=gelu_approximate)
  assert logits.shape == (2, 7)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)


def test_conv_stem_hybrid_matches_numpy_forward():
  """The CIFAR hybrid's stem: two conv/pool/GroupNorm stages, then 1x1 patches."""
  config = tiny_config(patch=1)
  config.conv_stem = ml_collections.ConfigDict({'features': (32, 64)})
  model = models_vit.VisionTransformer(num_classes=5, **config)
  params = random_params(model, 16)
  assert params['stem1_conv1']['kernel'].shape == (3, 3, 64, 64)
  assert params['embedding']['kernel'].shape == (1, 1, 64, 32)
  images = np.random.default_rng(2).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  logits = model.apply({'params': params}, images, train=False)
  expected = numpy_vit.forward(params, images, num_heads=4, patch=1)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  # 16 px / 2^2 = 4x4 tokens + the class token.
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 17, 32)
  config.conv_stem.features = (32, 48)
  with pytest.raises(UserInputError, match=r'conv_stem.features=\(32, 48\).*multiples of 32'):
    models_vit.VisionTransformer(num_classes=5, **config).init(
        jax.random.PRNGKey(0), images, train=False)


def test_plain_dict_configs_build_the_same_model():
  """model.json's "model" is plain JSON: its dicts (patches, resnet, conv_stem) are used as
  the ConfigDicts are (before, `patches.size` failed on flax's FrozenDict)."""
  import json  # pylint: disable=g-import-not-at-top
  images = np.random.default_rng(3).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
  for name in ('testing', 'R26+ViT-S_32'):
    config = models.get_model_config(name)
    if name != 'testing':  # a small hybrid: the ResNet stem's fields too
      config.hidden_size, config.transformer.num_layers = 24, 1
    plain = json.loads(config.to_json())
    assert isinstance(plain['patches'], dict)
    reference = models_vit.VisionTransformer(num_classes=3, **config)
    params = random_params(reference, 32)
    # Jitted: op-by-op, the hybrid's stem compiled every op afresh (~3x the time).
    logits = lambda model: jax.jit(lambda p: model.apply({'params': p}, images,
                                                         train=False))(params)
    np.testing.assert_array_equal(
        logits(models_vit.VisionTransformer(num_classes=3, **plain)), logits(reference))


@pytest.mark.parametrize('shape', [(2, 8, 6, 3), (1, 7, 9, 2)])
def test_max_pool_2x2_equals_flax_max_pool_and_its_gradient(shape):
  """The stem's reshape-and-max pool (XLA:CPU runs reduce_window's gradient as a scatter):
  flax's values, odd sizes cropped as VALID does, and the same gradient (no ties here)."""
  from flax import linen as nn  # pylint: disable=g-import-not-at-top
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
  flax_pool = lambda v: nn.max_pool(v, (2, 2), strides=(2, 2))
  np.testing.assert_array_equal(models_resnet.max_pool_2x2(x), flax_pool(x))
  cotangent = jnp.asarray(np.random.default_rng(1).standard_normal(flax_pool(x).shape))
  grad = lambda f: jax.grad(lambda v: jnp.sum(f(v) * cotangent))(x)
  np.testing.assert_array_equal(grad(models_resnet.max_pool_2x2), grad(flax_pool))


def test_parameter_tree_has_official_names():
  config = models.get_model_config('R26+ViT-S_32')
  config.representation_size = 384
  model = models_vit.VisionTransformer(num_classes=10, **config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  keys = set(npz.flatten(shapes['params']))
  for key in ['cls', 'embedding/kernel', 'Transformer/posembed_input/pos_embedding',
              'Transformer/encoderblock_0/LayerNorm_0/scale',
              'Transformer/encoderblock_11/MultiHeadDotProductAttention_0/query/kernel',
              'Transformer/encoderblock_0/MultiHeadDotProductAttention_0/out/kernel',
              'Transformer/encoderblock_0/LayerNorm_1/bias',
              'Transformer/encoderblock_0/MlpBlock_0/Dense_1/kernel',
              'Transformer/encoder_norm/scale', 'pre_logits/kernel', 'head/kernel',
              'conv_root/kernel', 'gn_root/scale', 'block1/unit1/conv_proj/kernel',
              'block4/unit2/gn3/bias']:
    assert key in keys, key
  assert shapes['params']['Transformer']['encoderblock_0']['MultiHeadDotProductAttention_0'][
      'query']['kernel'].shape == (384, 6, 64)


def test_head_is_zero_initialised_and_logits_zero():
  model = models_vit.VisionTransformer(num_classes=5, **models.get_model_config('testing'))
  # Jitted: op by op, each op of the init and the forward pass compiles alone.
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  assert not np.any(variables['params']['head']['kernel'])
  logits = jax.jit(model.apply)(variables, np.ones((3, 32, 32, 3), np.float32))
  np.testing.assert_array_equal(logits, np.zeros((3, 5)))


def _analytic_count(c, image=224, classes=1000):
  """Parameter count from the architecture's formulas, independently of Flax."""
  d, m, layers = c.hidden_size, c.transformer.mlp_dim, c.transformer.num_layers
  count, channels, stride = 0, 3, 1
  if c.get('resnet') is not None:
    w = 64
    count += 7 * 7 * 3 * w + 2 * w  # conv_root, gn_root
    channels, stride = w, 4
    for s, units in enumerate(c.resnet.num_layers):
      f = w * 2**s
      for u in range(units):
        if u == 0:
          count += channels * 4 * f + 2 * 4 * f  # conv_proj, gn_proj
        count += channels * f + 2 * f + 9 * f * f + 2 * f + f * 4 * f + 2 * 4 * f
        channels = 4 * f
      stride *= 2 if s > 0 else 1
  p = c.patches.size[0]
  tokens = (image // stride // p) ** 2 + (c.classifier == 'token')
  count += p * p * channels * d + d + (c.classifier == 'token') * d + tokens * d
  count += layers * (4 * d + 4 * (d * d + d) + d * m + m + m * d + d) + 2 * d
  if c.representation_size:
    count += d * c.representation_size + c.representation_size
    d = c.representation_size
  return count + d * classes + classes


# Published sizes (millions, 224 px, 1000 classes): timm's model cards / results tables for
# vit_{tiny,small,base,large,huge}_patch*_224 and the augreg hybrids; ViT paper Table 1 for
# the B/L/H families. B/16's exact count is given in the project's issue (86,567,656).
PUBLISHED_MILLIONS = {
    'ViT-Ti_16': 5.72, 'ViT-S_16': 22.05, 'ViT-S_32': 22.88, 'ViT-B_16': 86.57,
    'ViT-B_32': 88.22, 'ViT-B_8': 86.58, 'ViT-L_16': 304.33, 'ViT-L_32': 306.54,
    'ViT-H_14': 632.05, 'R+ViT-Ti_16': 6.34, 'R26+ViT-S_32': 36.43, 'R26+ViT-B_32': 101.38,
    'R50+ViT-L_32': 328.99, 'R50+ViT-B_16': 98.66,
}


@pytest.mark.parametrize('name', sorted(models.MODEL_CONFIGS))
def test_zoo_parameter_counts(name):
  """Each registered model's parameter count, and its name told from its parameter shapes
  by checkpoint.infer_model_name (used when an official .npz has no model.json), hybrids
  included: they differ only in the ResNet stem's units per stage (R26 (2, 2, 2, 2), R50
  (3, 4, 9) or (3, 4, 6, 3), R+Ti none). One trace of each model for both (a second, in
  test_vit_checkpoint.py, took ~1 s per model)."""
  config = models.get_model_config(name)
  model = models_vit.VisionTransformer(num_classes=1000, **config)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
  count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(shapes))
  assert count == _analytic_count(config)
  if name == 'ViT-B_16':
    assert count == 86_567_656
  if name in PUBLISHED_MILLIONS:
    assert round(count / 1e6, 2) == PUBLISHED_MILLIONS[name]
  assert checkpoint.infer_model_name(shapes['params'], source='x.npz', model_arg='--model') == (
      name)


def test_unknown_model_name_lists_valid_names():
  with pytest.raises(UserInputError, match=r"unknown model name 'ViT-X_16'.*ViT-B_16"):
    models.get_model_config('ViT-X_16')
  assert models.get_model_config('R26_S_32').model_name == 'R26+ViT-S_32'


@pytest.mark.parametrize('shape,match', [((32, 32, 3), '4-D batch'), ((1, 32, 32, 4), 'channels')])
def test_wrong_image_shape_is_a_clear_error(shape, match):
  model = models_vit.VisionTransformer(num_classes=5, **models.get_model_config('testing'))
  with pytest.raises(UserInputError, match=match):
    model.init(jax.random.PRNGKey(0), jnp.zeros(shape))


def _logits_and_grads(model, params, images):
  """`model`'s logits and the gradient of their sum of squares, from one jitted program: op
  by op, each op of the gradient compiled alone, and apart, the forward pass compiled twice."""
  def both(p):
    logits, vjp = jax.vjp(lambda q: model.apply({'params': q}, images), p)
    return logits, vjp(2 * logits)[0]
  return jax.jit(both)(params)


@functools.cache
def _plain_attention_reference(classifier):
  """Params, images, the numpy logits and the plain (einsum) model's gradients for
  `tiny_config(classifier)`: the same for every fused variant, so computed once (each
  compilation of a gradient takes seconds on a CPU)."""
  plain = models_vit.VisionTransformer(num_classes=7, **tiny_config(classifier))
  params = random_params(plain, 16)
  images = np.random.default_rng(1).uniform(-1, 1, (2, 16, 16, 3)).astype(np.float32)
  expected = numpy_vit.forward(params, images, num_heads=4, classifier=classifier, patch=4)
  return params, images, expected, _logits_and_grads(plain, params, images)[1]


@pytest.mark.parametrize('classifier,attention,token_multiple', [
    ('token', 'xla', 1), ('gap', 'xla', 1), ('token', 'xla', 8), ('gap', 'xla', 8),
    ('token', 'einsum', 8), ('gap', 'einsum', 5), ('token', 'pallas_interpret', 8),
    ('gap', 'pallas_interpret', 1), ('token', 'pallas_interpret_unpacked', 1)])
def test_fused_attention_matches_numpy_forward_and_einsum_gradients(classifier, attention,
                                                                     token_multiple,
                                                                     monkeypatch):
  """attention='xla' (jax.nn.dot_product_attention, the path 'cudnn' takes on GPUs), our
  flash attention ('pallas', interpreted; q, k, v packed from one matmul, or from three:
  '_unpacked'), and a token stream padded to a multiple (17 tokens -> 24 or 20, masked: the
  'cudnn' default) compute the same logits as the numpy reference and the same gradients
  as the plain path."""
  if attention.endswith('_unpacked'):
    attention = attention.removesuffix('_unpacked')
    monkeypatch.setattr(layers, 'PALLAS_PACKED_QKV', False)
  fused = models_vit.VisionTransformer(num_classes=7, attention=attention,
                                       token_multiple=token_multiple, **tiny_config(classifier))
  params, images, expected, plain_grads = _plain_attention_reference(classifier)
  logits, grads = _logits_and_grads(fused, params, images)
  np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_cudnn_pads_the_token_stream_once_by_default(monkeypatch):
  """attention='cudnn' pads 197 tokens (ViT-*/16 at 224 px) to 200 once, in the encoder:
  every layer's fused attention gets [B, 200, H, Dh] q/k/v with 197 valid keys. cuDNN needs
  a GPU, so the call is recorded and computed by the 'xla' implementation."""
  seen = []
  real = jax.nn.dot_product_attention

  def recording(q, k, v, *, implementation, key_value_seq_lengths, **kwargs):
    seen.append((implementation, q.shape, k.shape, key_value_seq_lengths))
    return real(q, k, v, implementation='xla', key_value_seq_lengths=key_value_seq_lengths,
                **kwargs)

  monkeypatch.setattr(jax.nn, 'dot_product_attention', recording)
  config = models.get_model_config('ViT-Ti_16')
  config.transformer.num_layers = 2
  model = models_vit.VisionTransformer(num_classes=10, attention='cudnn', **config)
  plain = models_vit.VisionTransformer(num_classes=10, **config)
  params = random_params(plain, 224)
  assert params['Transformer']['posembed_input']['pos_embedding'].shape == (1, 197, 192)
  images = np.random.default_rng(2).uniform(-1, 1, (2, 224, 224, 3)).astype(np.float32)
  logits = model.apply({'params': params}, images)  # eager: the lengths are concrete
  # The last block computes only the class token (einsum path), so one fused call.
  assert [s[:3] for s in seen] == [('cudnn', (2, 200, 3, 64), (2, 200, 3, 64))]
  np.testing.assert_array_equal(seen[0][3], [197, 197])
  np.testing.assert_allclose(logits, plain.apply({'params': params}, images),
                             rtol=1e-4, atol=1e-5)
  # One pad of the token stream, not one per q/k/v per layer (3 with per-layer padding).
  jaxpr = str(jax.make_jaxpr(lambda p: model.apply({'params': p}, images))(params))
  assert jaxpr.count(' pad[') == 1


def test_unknown_attention_is_a_clear_error():
  model = models_vit.VisionTransformer(num_classes=7, attention='flash', **tiny_config())
  with pytest.raises(ValueError, match="attention='flash'"):
    model.init(jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 3)))
