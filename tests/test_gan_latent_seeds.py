"""The latent search's randomness: a function of (seed, image), never of batching."""

import jax
import numpy as np
import pytest

from gan_jax import compress, fileformat, generators, latent_search, report
from tests import gan_search_helpers
from vision_core.errors import UserInputError

# Stops each image after 3 steps without a 10% gain: the three test images stop at
# different steps (18, 15 and 4), so a shared stop would show. Compiled chunks of 2 steps:
# compiling the chunk is most of this search's time, and grows with the steps it unrolls.
SEARCH = latent_search.SearchConfig(steps=40, restarts=2, stop_patience=3, stop_rtol=0.1,
                                    loop='chunked', chunk=2)


@pytest.fixture(scope='module')
def generator():
  return generators.load(compress.DEFAULT_GENERATOR.replace('cifar10_32', 'mnist_28'))


@pytest.fixture(scope='module')
def images(generator):
  """`[3, 28, 28, 1]` uint8: generator outputs plus noise (not exactly in its range)."""
  z = np.asarray(jax.random.normal(jax.random.PRNGKey(123), (3, 64)))
  clean = report.to_uint8(generator.generate(z))
  noise = np.random.default_rng(0).normal(0, 6, clean.shape)
  return np.clip(clean + noise, 0, 255).astype(np.uint8)


def test_an_image_gets_the_same_latent_alone_or_with_others(generator, images):
  """Image b of a batch used to start from row b of one draw for the whole batch, and the
  batch ran until its slowest image stopped: results depended on the batch and the row."""
  together = compress.search_latents(images, generator, SEARCH)
  reverse = compress.search_latents(images[::-1], generator, SEARCH)
  assert len(set(together.steps_run.tolist())) > 1  # Images really stop at different steps.
  for i in range(3):
    alone = compress.search_latents(images[i:i + 1], generator, SEARCH)
    for other, row in ((together, i), (reverse, 2 - i)):
      # Same start (the first step's losses), same stop, same latent up to float rounding
      # (the generator rounds differently for another batch size).
      np.testing.assert_allclose(other.curves[0, row], alone.curves[0, 0], rtol=1e-5)
      assert other.steps_run[row] == alone.steps_run[0]
      np.testing.assert_allclose(other.latents[row], alone.latents[0], atol=1e-4)
      np.testing.assert_allclose(other.loss[row], alone.loss[0], rtol=1e-4)


def test_the_same_row_of_two_batches_starts_apart(images):
  key = jax.random.PRNGKey(0)
  first = latent_search.initial_latents(key, latent_search.image_ids(images[:2]), 3, 64)
  second = latent_search.initial_latents(key, latent_search.image_ids(images[1:]), 3, 64)
  assert first.shape == (2, 3, 64)
  assert np.abs(np.asarray(first[1] - second[1])).min() > 0  # Row 1: images 1 and 2.
  np.testing.assert_array_equal(first[1], second[0])  # Image 1 in row 1, then in row 0.
  # Restarts differ from each other, and restart r does not depend on R.
  assert np.abs(np.asarray(first[:, 0] - first[:, 1])).min() > 0
  fewer = latent_search.initial_latents(key, latent_search.image_ids(images[:2]), 1, 64)
  np.testing.assert_array_equal(fewer[:, 0], first[:, 0])
  # Identical pixels, identical id; one changed pixel, another id.
  ids = latent_search.image_ids(images[[0, 0]])
  np.testing.assert_array_equal(ids[0], ids[1])
  changed = images[0].copy()
  changed[0, 0, 0] ^= 1
  assert not np.array_equal(latent_search.image_ids(changed[None])[0], ids[0])


def test_cli_batch_size_and_padding_change_no_latent(generator, images, tmp_path, monkeypatch):
  """Three images in one batch, or in batches of 2 (the last one padded): same latents."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  gan_search_helpers.shorten_chunks(monkeypatch)  # 2-step compiled chunks, not 10
  gpath = tmp_path / 'g.npz'
  generators.save(gpath, generator)
  inputs = []
  for i, x in enumerate(images):
    inputs.append(str(tmp_path / f'im{i}.png'))
    Image.fromarray(x[..., 0]).save(inputs[-1])
  latents = {}
  for batch in (3, 2):
    out = tmp_path / f'b{batch}'
    compress.main([*inputs, '-o', str(out), '--generator', str(gpath), '--steps', '8',
                   '--restarts', '1', '--quantization', 'float32', '--seed', '7',
                   '--batch-size', str(batch)])
    latents[batch] = np.stack([fileformat.read(out / f'im{i}.ganz').latent for i in range(3)])
  assert np.abs(latents[3][0] - latents[3][1]).max() > 0.1  # Not one shared start.
  np.testing.assert_allclose(latents[2], latents[3], atol=1e-4)


@pytest.mark.parametrize('seed', [2**32 + 5, -1, 1.0, True])
def test_seeds_outside_32_bits_are_named(seed):
  """PRNGKey takes seeds mod 2**32: 2**32 + 5 silently was seed 5."""
  with pytest.raises(UserInputError, match=r'seed=.*expected an integer in \[0, 4294967295\]'):
    latent_search.SearchConfig(seed=seed).validate()


def test_cli_and_study_name_a_bad_seed(tmp_path, capsys):
  args = ['x.png', '-o', str(tmp_path / 'z'), '--seed', str(2**32 + 5)]
  with pytest.raises(SystemExit) as e:
    compress.main(args)
  assert e.value.code == 2 and '--seed=4294967301' in capsys.readouterr().err
  from gan_jax import study  # pylint: disable=g-import-not-at-top
  from tests import study_helpers  # pylint: disable=g-import-not-at-top
  config = study_helpers.load_study_config()
  config.seed = 2**32
  with pytest.raises(UserInputError, match=r'--config.seed=4294967296'):
    study.run(config, out=str(tmp_path / 'study'), progress=False)
  assert not (tmp_path / 'study').exists()
  latent_search.SearchConfig(seed=2**32 - 1).validate()  # The largest seed is fine.
