"""GAN models: the PGAN importer against an independent numpy forward pass, DCGAN shapes."""

import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan_jax import generators, pgan_import
from gan_jax.models_dcgan import DCGANDiscriminator, DCGANGenerator
from vision_core.errors import UserInputError

L, D0, DEPTHS = 16, 8, (8, 4)  # 4 -> 8 -> 16 px


def _random_zoo_state(rng, *, inner_module=True, data_parallel=False):
  """A GNet state dict in pytorch_GAN_zoo's layout, N(0, 1) weights and random biases."""
  shapes = {'formatLayer': ((16 * D0, L), (16 * D0,)),
            'groupScale0.0': ((D0, D0, 3, 3), (D0,)),
            'toRGBLayers.0': ((3, D0, 1, 1), (3,))}
  prev = D0
  for i, d in enumerate(DEPTHS):
    shapes[f'scaleLayers.{i}.0'] = ((d, prev, 3, 3), (d,))
    shapes[f'scaleLayers.{i}.1'] = ((d, d, 3, 3), (d,))
    shapes[f'toRGBLayers.{i + 1}'] = ((3, d, 1, 1), (3,))
    prev = d
  state = {}
  for name, (w, b) in shapes.items():
    prefix = ('module.' if data_parallel else '') + name + ('.module' if inner_module else '')
    state[prefix + '.weight'] = rng.standard_normal(w).astype(np.float32)
    state[prefix + '.bias'] = (0.1 * rng.standard_normal(b)).astype(np.float32)
  return state


def _numpy_gnet(state, z, alpha=0.0):
  """pytorch_GAN_zoo's GNet.forward in plain numpy, NCHW, written from its description."""
  w = {k.replace('module.', '').replace('.weight', '/w').replace('.bias', '/b'): v
       for k, v in state.items()}
  lrelu = lambda x: np.where(x >= 0, x, 0.2 * x)
  pnorm = lambda x: x / np.sqrt(np.mean(x ** 2, axis=1, keepdims=True) + 1e-8)
  up = lambda x: x.repeat(2, axis=2).repeat(2, axis=3)

  def conv(x, name):
    weight, bias = w[name + '/w'], w[name + '/b']
    o, i, k, _ = weight.shape
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    h, wd = x.shape[2:]
    out = np.zeros((x.shape[0], o, h, wd))
    for dy in range(k):
      for dx in range(k):
        out += np.einsum('oi,bihw->bohw', weight[:, :, dy, dx], xp[:, :, dy:dy + h, dx:dx + wd])
    return (out + bias[None, :, None, None]) * np.sqrt(2.0 / (i * k * k))

  x = pnorm(z.astype(np.float64))
  x = (x @ w['formatLayer/w'].T + w['formatLayer/b']) * np.sqrt(2.0 / L)
  x = pnorm(lrelu(x).reshape(len(z), D0, 4, 4))
  x = pnorm(lrelu(conv(x, 'groupScale0.0')))
  y = None
  for s in range(len(DEPTHS)):
    x = up(x)
    for j in range(2):
      x = pnorm(lrelu(conv(x, f'scaleLayers.{s}.{j}')))
    if s == len(DEPTHS) - 2:
      y = up(conv(x, f'toRGBLayers.{s + 1}'))
  out = conv(x, f'toRGBLayers.{len(DEPTHS)}')
  if alpha > 0:
    out = alpha * y + (1 - alpha) * out
  return out.transpose(0, 2, 3, 1)  # NHWC, as ours


@pytest.mark.parametrize('inner_module,data_parallel', [(True, False), (False, True)])
def test_pgan_state_dict_matches_numpy_forward(inner_module, data_parallel):
  rng = np.random.default_rng(0)
  state = _random_zoo_state(rng, inner_module=inner_module, data_parallel=data_parallel)
  config, params = pgan_import.convert_state_dict(state)
  assert config['depth_other_scales'] == list(DEPTHS) and config['dim_latent'] == L
  generator = generators.make(config, params)
  assert generator.image_size == 16
  z = rng.standard_normal((3, L)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(generator.generate(z)), _numpy_gnet(state, z),
                             rtol=2e-4, atol=2e-4)
  # Jitted, as `generate` is: op by op, every op of the forward pass compiled afresh.
  blended = jax.jit(generators.build({**config, 'alpha': 0.3}).apply)(
      {'params': generator.params}, z)
  np.testing.assert_allclose(np.asarray(blended), _numpy_gnet(state, z, alpha=0.3),
                             rtol=2e-4, atol=2e-4)


def test_pth_full_checkpoint_with_zoo_config_roundtrips(tmp_path, monkeypatch):
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(1)
  state = _random_zoo_state(rng)
  # pytorch_GAN_zoo pickles its BaseConfig object; make one under that module name.
  module = types.ModuleType('models.utils.config')
  base_config = type('BaseConfig', (), {'__module__': 'models.utils.config'})
  module.BaseConfig = base_config
  with monkeypatch.context() as patch:
    for name in ('models', 'models.utils'):
      patch.setitem(sys.modules, name, types.ModuleType(name))
    patch.setitem(sys.modules, 'models.utils.config', module)
    config = base_config()
    config.depthScale0, config.depthOtherScales, config.latentVectorDim = D0, list(DEPTHS), L
    config.dimOutput, config.leakyReluLeak = 3, 0.2
    to_t = lambda d: {k: torch.from_numpy(v) for k, v in d.items()}
    avg = {k: v + 1.0 for k, v in state.items()}
    torch.save({'config': config, 'netG': to_t(state), 'avgG': to_t(avg), 'netD': {}},
               tmp_path / 'zoo.pth')
  generator = pgan_import.import_pth(tmp_path / 'zoo.pth')  # avgG by default
  z = rng.standard_normal((2, L)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(generator.generate(z)), _numpy_gnet(avg, z),
                             rtol=2e-4, atol=2e-4)
  # Converted once to our npz; reloading gives the same generator and identity.
  pgan_import.main([str(tmp_path / 'zoo.pth'), str(tmp_path / 'g.npz'), '--which', 'netG'])
  loaded = generators.load(tmp_path / 'g.npz')
  np.testing.assert_allclose(np.asarray(loaded.generate(z)), _numpy_gnet(state, z),
                             rtol=2e-4, atol=2e-4)
  assert loaded.identity != generator.identity
  with pytest.raises(SystemExit):  # exists, no --force
    pgan_import.main([str(tmp_path / 'zoo.pth'), str(tmp_path / 'g.npz')])


def test_zoo_config_alpha_is_kept():
  rng = np.random.default_rng(3)
  state = _random_zoo_state(rng)
  config, params = pgan_import.convert_state_dict(state, {'alpha': 0.4, 'depthScale0': D0})
  z = rng.standard_normal((2, L)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(generators.make(config, params).generate(z)),
                             _numpy_gnet(state, z, alpha=0.4), rtol=2e-4, atol=2e-4)


def test_importer_bad_input_messages():
  state = _random_zoo_state(np.random.default_rng(2))
  with pytest.raises(UserInputError, match='depthScale0=16'):
    pgan_import.convert_state_dict(state, {'depthScale0': 16})
  del state['scaleLayers.1.0.module.weight']
  with pytest.raises(UserInputError, match='scaleLayers.1.0.weight'):
    pgan_import.convert_state_dict(state)
  with pytest.raises(UserInputError, match='formatLayer'):
    pgan_import.convert_state_dict({'foo.weight': np.zeros(3)})
  state = _random_zoo_state(np.random.default_rng(2))
  with pytest.raises(UserInputError, match=r'config depthOtherScales=.abc. is not a list'):
    pgan_import.convert_state_dict(state, {'depthOtherScales': 'abc'})
  with pytest.raises(UserInputError, match=r'formatLayer.module.weight has shape .* 2 dim'):
    pgan_import.convert_state_dict({**state, 'formatLayer.module.weight': np.zeros((4, 4, 4))})
  with pytest.raises(UserInputError, match=r"1 key\(s\) that are not .* \['extra.weight'\]"):
    pgan_import.convert_state_dict({**state, 'extra.weight': np.zeros(3)})
  with pytest.raises(UserInputError, match='two keys name formatLayer.weight'):
    pgan_import.convert_state_dict({**state, 'module.formatLayer.weight': np.zeros((4, 4))})


def test_pth_with_bfloat16_tensors(tmp_path):
  torch = pytest.importorskip('torch')
  state = _random_zoo_state(np.random.default_rng(4))
  torch.save({k: torch.from_numpy(v).to(torch.bfloat16) for k, v in state.items()},
             tmp_path / 'bf16.pth')
  generator = pgan_import.import_pth(tmp_path / 'bf16.pth')
  expected = {k: torch.from_numpy(v).to(torch.bfloat16).float().numpy() for k, v in state.items()}
  z = np.random.default_rng(5).standard_normal((2, L)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(generator.generate(z)), _numpy_gnet(expected, z),
                             rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('size,channels', [(28, 1), (32, 3), (64, 3)])
def test_dcgan_shapes(size, channels):
  g = DCGANGenerator(latent_dim=8, image_size=size, channels=channels, width=4)
  d = DCGANDiscriminator(image_size=size, width=4)
  z = jax.ShapeDtypeStruct((2, 8), jnp.float32)
  gp = jax.eval_shape(g.init, jax.random.PRNGKey(1), z)  # Shapes only: nothing compiles.
  x = jax.eval_shape(g.apply, gp, z)
  assert x.shape == (2, size, size, channels)
  assert jax.eval_shape(d.apply, jax.eval_shape(d.init, jax.random.PRNGKey(2), x), x).shape \
      == (2,)


def test_dcgan_range_and_per_sample():
  g = DCGANGenerator(latent_dim=8, image_size=28, channels=1, width=4)
  z = jax.random.normal(jax.random.PRNGKey(0), (2, 8))
  gp = jax.jit(g.init)(jax.random.PRNGKey(1), z)
  g_apply = jax.jit(g.apply)
  x = g_apply(gp, z)
  assert float(jnp.max(jnp.abs(x))) <= 1.0 and float(jnp.std(x)) > 0
  # PixelNorm generator is per sample: a sample's output does not depend on its batch.
  np.testing.assert_allclose(g_apply(gp, z[:1]), x[:1], rtol=1e-4, atol=1e-4)
  with pytest.raises(UserInputError, match='image_size=48'):
    DCGANGenerator(image_size=48).init(jax.random.PRNGKey(0), z)


def test_shipped_mnist_generator_loads_and_draws_varied_digits():
  from gan_jax import compress, report  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(compress.__file__), 'weights', 'dcgan_mnist_28.npz')
  g = generators.load(path)
  assert (g.image_size, g.channels, g.latent_dim) == (28, 1, 64)
  images = report.to_uint8(g.generate(jax.random.normal(jax.random.PRNGKey(0), (16, 64))))
  # Digits: mostly black background, some bright strokes, and samples differ.
  assert 0.05 < np.mean(images > 128) < 0.4
  assert np.mean(np.std(images.astype(float), axis=0)) > 30


def test_upscale2d_conv3x3_equals_upsample_then_conv():
  """The folded upsample + conv and its gradients (the input's is what the latent search
  uses; the kernel's, GAN training)."""
  from gan_jax import models_pgan  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2, 3, 5, 4)), jnp.float32)
  kernel = jnp.asarray(rng.standard_normal((3, 3, 4, 6)), jnp.float32)

  def reference(x):
    return jax.lax.conv_general_dilated(models_pgan.upscale2d(x), kernel, (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  # Each side jitted, as the search and the training step trace them: op by op, every op
  # (and its gradient's) compiled afresh.
  folded = jax.jit(models_pgan.upscale2d_conv3x3)(x, kernel)
  assert folded.shape == (2, 6, 10, 6)
  np.testing.assert_allclose(folded, jax.jit(reference)(x), rtol=1e-5, atol=1e-5)
  cotangent = jnp.asarray(rng.standard_normal(folded.shape), jnp.float32)
  grad = lambda f: jax.jit(jax.grad(lambda v: jnp.sum(f(v) * cotangent)))(x)
  np.testing.assert_allclose(grad(lambda v: models_pgan.upscale2d_conv3x3(v, kernel)),
                             grad(reference), rtol=1e-4, atol=1e-4)
  # The kernel's gradient too (GAN training), through the interleave's own backward pass.
  kernel_grad = lambda f: jax.jit(jax.grad(lambda k: jnp.sum(f(x, k) * cotangent)))(kernel)
  np.testing.assert_allclose(
      kernel_grad(models_pgan.upscale2d_conv3x3),
      kernel_grad(lambda v, k: jax.lax.conv_general_dilated(
          models_pgan.upscale2d(v), k, (1, 1), 'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC'))), rtol=1e-4, atol=1e-4)
  conv5 = models_pgan.EqualizedConv(6, 5, upscale_input=True)
  with pytest.raises(ValueError, match='3x3 kernel only; got kernel_size=5'):
    conv5.init(jax.random.key(0), x)
