"""GAN-latent compression: the compiled search, quantisation and exact decompression."""

import hashlib

import jax
import numpy as np
import pytest

from gan_jax import compress, decompress, fileformat, generators, latent_search, report
from tests import gan_search_helpers
from vision_core import mesh as mesh_lib

# Compiled chunks of 2 steps (the default is 10): on a CPU compiling the chunk is most of a
# short search's time, and it grows with the steps a chunk unrolls (tests/gan_search_helpers).
# The steps and results do not depend on the chunk (test_while_loop_and_chunked_drivers_agree).
SEARCH = latent_search.SearchConfig(steps=150, restarts=3, optimizer='sgd', chunk=2)
# The Adam search of two images: also the library compression test's, which reuses its
# compiled program.
ADAM = latent_search.SearchConfig(steps=60, restarts=1, optimizer='adam', chunk=2)


@pytest.fixture(scope='module')
def generator():
  """The shipped 28 px MNIST DCGAN (latent 64): a real generator, still small."""
  return generators.load(compress.DEFAULT_GENERATOR.replace('cifar10_32', 'mnist_28'))


@pytest.fixture(scope='module')
def held_out(generator):
  """Images the search never saw the latents of: G(z_hidden) plus a little pixel noise,
  so that they are not exactly in the generator's range (as real images are not)."""
  z_hidden = np.asarray(jax.random.normal(jax.random.PRNGKey(123), (4, 64)))
  clean = report.to_uint8(generator.generate(z_hidden))
  noise = np.random.default_rng(0).normal(0, 6, clean.shape)
  return np.clip(clean + noise, 0, 255).astype(np.uint8)


@pytest.fixture(scope='module')
def searched(generator, held_out):
  # 4 images sharded over a 'data' axis of 2 devices (of the 8 virtual ones: on a 2-core
  # CI machine more shards only add overhead).
  mesh = mesh_lib.make_mesh(devices=jax.devices()[:2])
  return compress.search_latents(held_out, generator, SEARCH, mesh=mesh)


def test_loss_falls_and_psnr_far_above_random(generator, held_out, searched):
  curves = np.asarray(searched.curves)
  assert np.all(searched.steps_run >= 20)
  first, last = curves[0], curves[searched.steps_run - 1, np.arange(4)]
  assert np.all(np.nanmin(curves, axis=0) <= first)
  assert np.all(searched.loss < 0.2 * first.min(axis=-1))  # Best restart of every image.
  assert np.mean(last) < 0.5 * np.mean(first)
  z_random = np.asarray(jax.random.normal(jax.random.PRNGKey(7), (4, 64)))
  found = [report.psnr(compress.reconstruct(generator, z), x)
           for z, x in zip(searched.latents, held_out)]
  rand = [report.psnr(compress.reconstruct(generator, z), x)
          for z, x in zip(z_random, held_out)]
  assert min(found) > max(rand) + 10, (found, rand)


def test_best_of_restarts_never_worse_than_one_start(generator, held_out, searched):
  losses = np.asarray(searched.restart_losses)
  np.testing.assert_array_equal(searched.loss, losses.min(axis=1))
  one = latent_search.SearchConfig(**{**SEARCH.__dict__, 'restarts': 1})
  single = compress.search_latents(held_out, generator, one)
  # Restart 0 starts from the same latent whatever R is; float noise between batch shapes
  # may move a trajectory slightly, hence the small tolerance.
  assert np.all(searched.loss <= single.loss * (1 + 1e-3) + 1e-7), (searched.loss,
                                                                    single.loss)
  # The chosen latent really has the reported loss.
  recon = generator.generate(searched.latents)
  target = (held_out.astype(np.float32) - 127.5) / 127.5
  mse = np.mean((np.asarray(recon) - target) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(mse, searched.loss, rtol=1e-3)


def test_adam_also_converges(generator, held_out):
  result = compress.search_latents(held_out[:2], generator, ADAM)
  curves = np.asarray(result.curves)
  assert np.all(result.loss < 0.5 * curves[0].min(axis=-1))


def test_8bit_latents_cost_under_half_a_db(generator, held_out, searched):
  for z, x in zip(searched.latents, held_out):
    exact = report.psnr(compress.reconstruct(generator, z), x)
    q8 = report.psnr(compress.reconstruct(generator, fileformat.roundtrip(z, '8bit')), x)
    assert exact - q8 < 0.5, (exact, q8)


@pytest.mark.parametrize('spec', ['float32', 'float16', '8bit', '3bit', '12bit', '16bit'])
def test_file_roundtrip_matches_quantiser(spec):
  z = np.random.default_rng(1).standard_normal((2, 37)).astype(np.float32)
  data = fileformat.encode(z, generator_id='ab' * 32, quantization=spec, image_size=(5, 7))
  item = fileformat.decode(data)
  np.testing.assert_array_equal(item.latent, fileformat.roundtrip(z, spec))
  assert item.image_size == (5, 7) and str(item.quantization) == spec
  bits = fileformat.Quantization.parse(spec).bits
  header = 28 + 4 * 2 + 4 + (8 if 'bit' in spec else 0)
  assert len(data) == header + (z.size * bits + 7) // 8
  if spec == '16bit':
    assert np.abs(item.latent - z).max() <= (z.max() - z.min()) / 65535


def _digest(paths):
  return [hashlib.sha256(open(p, 'rb').read()).hexdigest() for p in paths]


def test_cli_roundtrip_is_exact_and_never_touches_inputs(generator, held_out, tmp_path,
                                                         monkeypatch):
  from PIL import Image
  gan_search_helpers.shorten_chunks(monkeypatch)
  gpath = tmp_path / 'g.npz'
  generators.save(gpath, generator)
  inputs = []
  for i, x in enumerate(held_out[:2]):
    inputs.append(tmp_path / f'im{i}.png')
    Image.fromarray(x[..., 0]).save(inputs[-1])
  before = _digest(inputs)
  out, rec = tmp_path / 'z', tmp_path / 'rec'
  args = [*map(str, inputs), '-o', str(out), '--generator', str(gpath), '--steps', '20',
          '--restarts', '1', '--quantization', 'float32', '--report', str(tmp_path / 'r.json')]
  compress.main(args)
  files = sorted(out.glob('*.ganz'))
  assert len(files) == 2
  decompress.main([*map(str, files), '-o', str(rec), '--generator', str(gpath)])
  for f in files:
    item = fileformat.read(f)
    expected = compress.reconstruct(generator, item.latent)  # G(z*), float32 latents
    got = np.asarray(Image.open(rec / (f.stem + '.png')))[..., None]
    np.testing.assert_array_equal(got, expected)
    assert item.generator_id.hex() == generator.identity[:32]
  assert _digest(inputs) == before
  # Output exists: clear refusal, nothing changed; --force replaces.
  stamp = _digest(files)
  with pytest.raises(SystemExit) as e:
    compress.main(args)
  assert e.value.code == 2 and _digest(files) == stamp
  with pytest.raises(SystemExit):
    decompress.main([*map(str, files), '-o', str(rec), '--generator', str(gpath)])
  compress.main(args[:-2] + ['--force'])
  assert _digest(inputs) == before


def test_compress_library_reconstruction_equals_decompress(generator, held_out):
  files, recons, _ = compress.compress(held_out[:2], generator, quantization='6bit',
                                       config=ADAM)
  for data, recon in zip(files, recons):
    np.testing.assert_array_equal(decompress.decompress(data, generator), recon)


def test_library_refuses_targets_it_would_misread(generator, held_out):
  """Float [0, 1] or 16-bit pixels were fitted silently as near-black or over-bright
  targets; wrong sizes failed deep in JAX. Each is now named before any search."""
  from vision_core.errors import UserInputError  # pylint: disable=g-import-not-at-top
  cases = [
      (held_out / 255.0, r'expected uint8 images \(0\.\.255\), got float64 in \[0, 1\]'),
      (held_out.astype(np.uint16) * 257, r'expected uint8 images .*, got uint16 in'),
      (held_out[0], r'expected a batch \[B >= 1, 28, 28, 1\] .*, got \(28, 28, 1\)'),
      (np.zeros((2, 32, 32, 1), np.uint8), r'got \(2, 32, 32, 1\); prepare\(image, '),
      (np.zeros((2, 28, 28, 3), np.uint8), r'with 1 channel\(s\)\), got \(2, 28, 28, 3\)'),
      (held_out[:0], r'expected a batch \[B >= 1'),
  ]
  for targets, message in cases:
    with pytest.raises(UserInputError, match=message):
      compress.compress(targets, generator)


def test_perceptual_term_on_vit_features(generator, held_out):
  import jax.numpy as jnp
  from gan_jax import perceptual
  from vit_jax import models_vit
  from vit_jax.configs import models
  vit = models_vit.VisionTransformer(num_classes=None, **models.get_model_config('testing'))
  # init and the reference computations jitted: op by op they compiled every op afresh.
  vit_params = jax.jit(vit.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params']
  features = perceptual.vit_features(vit, vit_params, 32)
  cfg = latent_search.SearchConfig(steps=25, restarts=1, perceptual_weight=0.5, chunk=2)
  result = compress.search_latents(held_out[:2], generator, cfg, features_fn=features)
  target = (held_out[:2].astype(np.float32) - 127.5) / 127.5
  recon = jax.jit(generator.generate)(result.latents)
  jit_features = jax.jit(features)
  expected = (np.mean((np.asarray(recon) - target) ** 2, axis=(1, 2, 3)) + 0.5 * np.mean(
      (np.asarray(jit_features(recon)) - np.asarray(jit_features(target))) ** 2, axis=-1))
  np.testing.assert_allclose(result.loss, expected, rtol=1e-3)
  assert np.all(result.loss < np.asarray(result.curves)[0].min(axis=-1))


def test_early_stop_on_plateau(generator, held_out):
  cfg = latent_search.SearchConfig(steps=3000, restarts=1, stop_patience=5, stop_rtol=1e-2,
                                   chunk=2)
  result = compress.search_latents(held_out[:2], generator, cfg)
  curves = np.asarray(result.curves)
  for b, n in enumerate(result.steps_run):  # Each image stops on its own plateau.
    assert 5 < n < 3000
    assert np.all(np.isfinite(curves[:n, b])) and np.all(np.isnan(curves[n:, b]))
    # Stopped because its trajectory went 5 steps without a 1% improvement.
    c = curves[:n, b, 0]
    assert c[-5:].min() > (1 - 1e-2) * np.minimum.accumulate(c)[-6] - 1e-12


@pytest.mark.parametrize('stop_patience', [0, 2])
def test_while_loop_and_chunked_drivers_agree(generator, held_out, stop_patience):
  """Also when the images stop early: the chunked driver queues the next chunk before it
  reads whether to go on, and a chunk after the stop must change nothing."""
  base = dict(steps=23, restarts=2, stop_patience=stop_patience, stop_rtol=0.2)
  a = compress.search_latents(held_out[:2], generator,
                              latent_search.SearchConfig(loop='while', **base))
  # Chunks of 2 steps: the 23 steps end inside a chunk, and so does the early stop (after
  # step 3), with the chunk queued after it still to come.
  b = compress.search_latents(held_out[:2], generator,
                              latent_search.SearchConfig(loop='chunked', chunk=2, **base))
  np.testing.assert_array_equal(a.steps_run, b.steps_run)
  if stop_patience:
    assert np.all(b.steps_run < 15)  # stopped early, chunks queued past the stop
  else:
    assert np.all(a.steps_run == 23)
  # Same steps; only float rounding differs (XLA fuses the two programs differently).
  np.testing.assert_allclose(a.curves, b.curves, rtol=5e-3, atol=1e-6)
  np.testing.assert_allclose(a.latents, b.latents, rtol=1e-2, atol=1e-2)
