"""vision_core.fused_mlp (the MLP with its bias and GELU inside the matmuls) and its
Mosaic GPU kernels (fused_mlp_mosaic), run through Pallas' interpreters on the CPU, against an
independent numpy forward and backward pass and against the model's XLA path."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_vit_model import tiny_config
from vision_core import fused_mlp, fused_mlp_mosaic
from vit_jax import models_vit

TILES = fused_mlp.Tiles(block_m=32, block_n=64, block_k=16)


def _f64(a):
  return np.asarray(a, np.float64)


def _numpy_mlp_and_grads(x, w1, b1, w2, b2, dy):
  """float64: `y = gelu(x w1 + b1) w2 + b2` (tanh GELU) and the gradients of `sum(y * dy)`."""
  x, w1, b1, w2, b2, dy = map(_f64, (x, w1, b1, w2, b2, dy))
  c = np.sqrt(2 / np.pi)
  pre = x @ w1 + b1
  t = np.tanh(c * (pre + 0.044715 * pre ** 3))
  h = 0.5 * pre * (1 + t)
  slope = 0.5 * (1 + t) + 0.5 * pre * (1 - t ** 2) * c * (1 + 3 * 0.044715 * pre ** 2)
  dh = dy @ w2.T
  dpre = dh * slope
  return h @ w2 + b2, (dpre @ w1.T, x.T @ dpre, dpre.sum(0), h.T @ dy, dy.sum(0))


def _inputs(m, d, f, seed=0):
  rng = np.random.default_rng(seed)
  shapes = [((m, d), 1.0), ((d, f), 1 / np.sqrt(d)), ((f,), 0.5), ((f, d), 1 / np.sqrt(f)),
            ((d,), 0.5), ((m, d), 1.0)]
  return [jnp.asarray(rng.normal(size=s) * scale, jnp.float32) for s, scale in shapes]


@pytest.mark.parametrize('forward_tiles', [TILES, None], ids=['fused_forward', 'xla_forward'])
def test_mlp_value_and_gradients_match_numpy(forward_tiles):
  # 70 rows: not a multiple of block_m, so the padding of the row blocks is exercised.
  x, w1, b1, w2, b2, dy = _inputs(70, 32, 128)
  y, vjp = jax.vjp(lambda *p: fused_mlp.mlp(*p, forward_tiles, TILES, True), x, w1, b1, w2, b2)
  want_y, want_grads = _numpy_mlp_and_grads(x, w1, b1, w2, b2, dy)
  np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-4)
  for name, got, want in zip(('x', 'w1', 'b1', 'w2', 'b2'), vjp(dy), want_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(),
                               err_msg=name)


def test_kernels_write_every_tile():
  """The forward kernel's two outputs and the backward kernel's outputs, over a grid of
  several row and column blocks, against numpy (a tile left unwritten would be garbage)."""
  x, w1, b1, w2, _, dy = _inputs(96, 32, 192, seed=1)
  pre, h = fused_mlp.dense_gelu(x, w1, b1, TILES, interpret=True)
  want_pre = np.asarray(x, np.float64) @ np.asarray(w1, np.float64) + np.asarray(b1)
  np.testing.assert_allclose(pre, want_pre, rtol=1e-5, atol=1e-5)
  value, slope = fused_mlp.gelu_tanh_and_slope(pre)
  np.testing.assert_allclose(h, value, rtol=1e-6, atol=1e-6)
  dpre, bias_grad = fused_mlp.gelu_input_grad(dy, w2, pre, TILES, interpret=True)
  want_dpre = (np.asarray(dy, np.float64) @ np.asarray(w2, np.float64).T) * np.asarray(slope)
  np.testing.assert_allclose(dpre, want_dpre, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(bias_grad, want_dpre.sum(0), rtol=1e-4, atol=1e-3)


def test_gelu_slope_is_the_derivative_of_flax_gelu():
  x = jnp.linspace(-6, 6, 601, dtype=jnp.float32)
  value, slope = fused_mlp.gelu_tanh_and_slope(x)
  np.testing.assert_allclose(value, jax.nn.gelu(x, approximate=True), atol=1e-6)
  np.testing.assert_allclose(
      slope, jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=True)))(x), atol=1e-5)


def test_fits_names_the_shapes_the_kernels_take():
  assert fused_mlp.fits(768, 3072, fused_mlp.Tiles())
  assert fused_mlp.fits(768, 3072, None)
  assert not fused_mlp.fits(768, 3000, fused_mlp.Tiles())  # columns must tile
  assert not fused_mlp.fits(40, 3072, fused_mlp.Tiles())   # depth must tile


def test_mosaic_kernels_lower_for_cuda():
  """The Mosaic GPU kernels run on Hopper GPUs only; here they are traced and lowered for
  CUDA (shapes, block specs, the epilogues' slices, the shared-memory budget). Their values
  are checked on a GPU by bench/gpu_mlp_kernels.py."""
  tiles = fused_mlp_mosaic.MosaicTiles(tile_m=64, tile_n=64, tile_k=64)
  assert fused_mlp.fits(64, 256, tiles) and not fused_mlp.fits(64, 192, tiles)
  assert not fused_mlp.fits(768, 3072, fused_mlp_mosaic.MosaicTiles(epilogue=32))
  shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)
  forward = jax.jit(lambda x, w1, b1: fused_mlp_mosaic.dense_gelu(x, w1, b1, tiles,
                                                                  num_sms=4))
  backward = jax.jit(lambda dy, w2, pre: fused_mlp_mosaic.gelu_input_grad(
      dy, w2, pre, tiles, num_sms=4))
  # 100 rows: padded to the 64-row tiles.
  for kernel, args, outputs in (
      (forward, (shape(100, 64), shape(64, 256), shape(256)), [(100, 256), (100, 256)]),
      (backward, (shape(100, 64), shape(256, 64), shape(100, 256)), [(100, 256), (256,)])):
    lowered = kernel.trace(*args).lower(lowering_platforms=('cuda',))
    assert 'mosaic_gpu' in lowered.as_text()
    assert [o.shape for o in jax.eval_shape(kernel, *args)] == outputs
  # ViT-B/16's MLP with the default tiles fits the H100's shared memory; 4 stages do not
  # leave room for the forward's two outputs, nor for the backward's prefetched `pre`.
  vit_b = (shape(102400, 768), shape(768, 3072), shape(3072))
  vit_b_backward = (shape(102400, 768), shape(3072, 768), shape(102400, 3072))

  def lower_vit_b(kernel, args, **tiles):
    jax.jit(lambda *a: kernel(*a, fused_mlp_mosaic.MosaicTiles(**tiles), num_sms=132)).trace(
        *args).lower(lowering_platforms=('cuda',))
  lower_vit_b(fused_mlp_mosaic.dense_gelu, vit_b)
  lower_vit_b(fused_mlp_mosaic.gelu_input_grad, vit_b_backward)
  # The backward's two-slot ring leaves room for a fourth stage; prefetching does not.
  lower_vit_b(fused_mlp_mosaic.gelu_input_grad, vit_b_backward, stages=4, prefetch=False)
  for kernel, args in ((fused_mlp_mosaic.dense_gelu, vit_b),
                       (fused_mlp_mosaic.gelu_input_grad, vit_b_backward)):
    with pytest.raises(ValueError, match='exceeds available shared memory'):
      lower_vit_b(kernel, args, stages=4)


def _bfloat16(*arrays):
  return [jnp.asarray(a, jnp.bfloat16) for a in arrays]


# Each interpreted program compiles its threads' code anew (seconds each), so the cases use
# few programs, and the backward's two `pre` loadings share one forward.
@pytest.mark.parametrize('tiles, m, d, f, programs, prefetch', [
    # 150 rows padded to 192; 3 output tiles over 2 programs (uneven), walked in bands of
    # 2 rows, the last one partial; 4 steps over 2 stages.
    (fused_mlp_mosaic.MosaicTiles(tile_m=64, tile_n=64, tile_k=64, stages=2, band=2),
     150, 256, 128, 2, (True,)),
    # The default shape: four epilogue sub-tiles per tile, alternating the two slots; one
    # program walks all 4 tiles. The backward twice: loading the whole tile's `pre` while
    # the steps run, and one sub-tile at a time into two alternating slots (the forward has
    # no such setting).
    (fused_mlp_mosaic.MosaicTiles(band=2), 256, 256, 512, 1, (True, False)),
    # Tiles walked along N first (6, 3 per program), 3 steps deep over 3 stages.
    (fused_mlp_mosaic.MosaicTiles(tile_m=64, tile_n=64, tile_k=64, m_minor=False, band=1),
     128, 192, 384, 2, (True,)),
], ids=['padded_rows', 'default_tile_and_no_prefetch', 'n_minor'])
def test_mosaic_kernels_match_numpy_in_the_interpreter(tiles, m, d, f, programs, prefetch):
  """Both Mosaic GPU kernels, run by Pallas' Mosaic GPU interpreter (warpgroups, TMA,
  barriers; memory starts as NaN, so an unwritten tile fails), against float64 numpy on the
  same bfloat16 inputs. Tolerance: the kernels round the accumulator to bfloat16 (as XLA's
  matmul writes it) and round again after the bias / GELU slope, ~2^-8 each."""
  x, w1, b1, w2, _, dy = _inputs(m, d, f, seed=2)
  x, w1, b1, w2, dy = _bfloat16(x, w1, b1, w2, dy)
  pre, h = fused_mlp_mosaic.dense_gelu(x, w1, b1, tiles, num_sms=programs, interpret=True)
  want_pre = _f64(x) @ _f64(w1) + _f64(b1)
  np.testing.assert_allclose(_f64(pre), want_pre, rtol=0, atol=1e-2 * np.abs(want_pre).max())
  value, slope = fused_mlp.gelu_tanh_and_slope(jnp.asarray(pre, jnp.float32))
  np.testing.assert_allclose(_f64(h), _f64(value), rtol=1e-2, atol=1e-2)
  want_dpre = (_f64(dy) @ _f64(w2).T) * _f64(slope)
  for p in prefetch:
    dpre, bias_grad = fused_mlp_mosaic.gelu_input_grad(
        dy, w2, pre, dataclasses.replace(tiles, prefetch=p), num_sms=programs, interpret=True)
    np.testing.assert_allclose(_f64(dpre), want_dpre, rtol=0,
                               atol=1e-2 * np.abs(want_dpre).max(), err_msg=f'prefetch={p}')
    # The column sums are of the bfloat16 dpre the kernel wrote.
    np.testing.assert_allclose(bias_grad, _f64(dpre).sum(0), rtol=1e-5, atol=1e-3,
                               err_msg=f'prefetch={p}')


def test_mlp_with_mosaic_kernels_matches_numpy():
  """fused_mlp.mlp with both passes on the Mosaic kernels (interpreted): value and the five
  gradients against the float64 pass, in bfloat16 (70 rows: padded to the 64-row tiles)."""
  tiles = fused_mlp_mosaic.MosaicTiles(tile_m=64, tile_n=64, tile_k=64, stages=2)
  inputs = _bfloat16(*_inputs(70, 64, 128, seed=3))
  x, w1, b1, w2, b2, dy = inputs
  y, vjp = jax.vjp(lambda *p: fused_mlp.mlp(*p, tiles, tiles, True), x, w1, b1, w2, b2)
  want_y, want_grads = _numpy_mlp_and_grads(*inputs)
  np.testing.assert_allclose(_f64(y), want_y, rtol=0, atol=2e-2 * np.abs(want_y).max())
  for name, got, want in zip(('x', 'w1', 'b1', 'w2', 'b2'), vjp(dy), want_grads):
    np.testing.assert_allclose(_f64(got), want, rtol=0, atol=2e-2 * np.abs(want).max(),
                               err_msg=name)


def _small_vit(**kwargs):
  config = tiny_config()
  config.transformer.mlp_dim = 128  # a multiple of the kernels' column tiles
  return models_vit.VisionTransformer(num_classes=10, **config, **kwargs)


def test_vit_with_fused_mlp_matches_xla_path():
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (3, 16, 16, 3)), jnp.float32)
  plain = _small_vit()
  # One tile per layer's MLP: the interpreter's cost is per tile.
  tiles = fused_mlp.Tiles(block_m=64, block_n=128, block_k=32)
  fused = _small_vit(mlp_impl='pallas_interpret', mlp_tiles=(tiles, tiles))
  # One compiled init, the fused model's only traced, the perturbation in numpy: eager, each
  # op of them was compiled on its own, half of this test's time.
  params = jax.jit(plain.init)(jax.random.key(0), images)['params']
  fused_params = jax.eval_shape(fused.init, jax.random.key(0), images)['params']
  assert jax.tree.structure(params) == jax.tree.structure(fused_params)
  # Non-zero head and perturbed weights, so every gradient is non-trivial.
  rng = np.random.default_rng(1)
  params = jax.tree.map(
      lambda a: np.asarray(a) + 0.05 * rng.normal(size=a.shape).astype(np.float32), params)

  def loss(model):
    return lambda p: jnp.sum(jnp.sin(model.apply({'params': p}, images, train=True)))
  want, want_grads = jax.jit(jax.value_and_grad(loss(plain)))(params)
  got, got_grads = jax.jit(jax.value_and_grad(loss(fused)))(params)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got_grads),
                          jax.tree.leaves(want_grads)):
    # key biases have a zero gradient (softmax ignores a shift): compare absolutely.
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize('kwargs, message', [
    (dict(mlp_impl='triton'), "mlp_impl='triton': expected one of"),
    (dict(mlp_impl='pallas_interpret', gelu_approximate=False), 'tanh GELU only'),
    (dict(mlp_impl='pallas'), "mlp_impl='pallas' runs on NVIDIA GPUs only"),
])
def test_bad_mlp_settings_are_named(kwargs, message):
  if kwargs.get('mlp_impl') == 'pallas' and jax.default_backend() == 'gpu':
    pytest.skip('a GPU runs the kernels')
  images = jnp.zeros((1, 16, 16, 3))
  with pytest.raises(ValueError, match=message):  # when traced: nothing need run
    jax.eval_shape(_small_vit(**kwargs).init, jax.random.key(0), images)
