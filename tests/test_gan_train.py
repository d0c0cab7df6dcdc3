"""DCGAN training: a tiny run on MNIST-layout IDX files, resume, samples, export; metrics."""

import json

import numpy as np
import pytest

from gan_jax import compress, fid_vit, generators, train
from tests import gan_train_helpers as helpers
from vision_core import metrics_log
from vision_core.errors import UserInputError


@pytest.fixture
def tiny_config(tmp_path):
  return helpers.tiny_config(tmp_path)


def test_train_resume_samples_and_export(tiny_config, tmp_path, monkeypatch):
  from gan_jax import main  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  first = main.run(tiny_config, workdir)
  assert first['step'] == 4 and np.isfinite(first['g_loss'])
  cache = sorted((tmp_path / 'run' / 'fid_stats').glob('real_*.npz'))
  assert len(cache) == 1
  mtime = cache[0].stat().st_mtime_ns
  stats_calls = []
  original_stats = fid_vit.VitFid.stats
  def spy(self, images):
    stats_calls.append(len(images))
    return original_stats(self, images)
  monkeypatch.setattr(fid_vit.VitFid, 'stats', spy)
  tiny_config.total_steps = 6
  main.run(tiny_config, workdir)  # Resumes at 4 from the orbax checkpoint.
  # Only the step-6 samples were embedded: the real statistics came from the cache.
  assert stats_calls == [16] and cache[0].stat().st_mtime_ns == mtime
  assert sorted((tmp_path / 'run' / 'fid_stats').glob('real_*.npz')) == cache
  rows = metrics_log.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')
  train_steps = [r['step'] for r in rows if r['split'] == 'train']
  assert train_steps == [2, 4, 6]
  assert [r['step'] for r in rows if r['split'] == 'eval'] == [2, 4, 6]
  assert all(np.isfinite(r['pixel_fd']) and r['fid_vit'] > 0
             for r in rows if r['split'] == 'eval')
  for step in (2, 4, 6):
    assert (tmp_path / 'run' / 'samples' / f'step_{step:06d}.png').exists()
  generator = generators.load(tmp_path / 'run' / 'generator.npz')
  assert generator.image_size == 28 and generator.latent_dim == 8
  assert compress.reconstruct(generator, np.zeros(8)).shape == (28, 28, 1)
  final = json.loads((tmp_path / 'run' / 'final.json').read_text())
  assert final['step'] == 6
  # The module docstring promises the last metrics: the step-6 FIDs are among them.
  last_eval = [r for r in rows if r['split'] == 'eval'][-1]
  assert final['fid_vit'] == last_eval['fid_vit'] and final['pixel_fd'] == last_eval['pixel_fd']


def test_missing_vit_checkpoint_fails_before_training(tiny_config, tmp_path):
  from gan_jax import main  # pylint: disable=g-import-not-at-top
  missing = str(tmp_path / 'vit' / 'model.npz')
  tiny_config.fid_vit_checkpoint = missing
  with pytest.raises(UserInputError, match=f'config.fid_vit_checkpoint: {missing} does not'):
    main.run(tiny_config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists()


def test_wgan_gp_step_runs_and_moves_ema(tiny_config):
  import jax  # pylint: disable=g-import-not-at-top
  from vision_core import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  tiny_config.loss = 'wgan_gp'
  mesh = mesh_lib.make_mesh(devices=jax.devices()[:2])
  state = jax.device_put(train.init_state(tiny_config, jax.random.PRNGKey(0)),
                         mesh_lib.replicated(mesh))
  before = jax.device_get(state['ema'])
  step = train.make_train_step(config=tiny_config, mesh=mesh)
  real = np.random.default_rng(0).uniform(-1, 1, (8, 28, 28, 1)).astype(np.float32)
  state, metrics = step(state, real, jax.random.PRNGKey(1))
  assert int(state['step']) == 1 and metrics['penalty'] > 0
  after = jax.device_get(state['ema'])
  g = jax.device_get(state['g'])
  # ema = d * ema + (1 - d) * g, leaf by leaf.
  leaf = lambda t: t['up_0']['kernel']
  np.testing.assert_allclose(leaf(after), tiny_config.ema_decay * leaf(before)
                             + (1 - tiny_config.ema_decay) * leaf(g), rtol=1e-5, atol=1e-7)


def test_pixel_frechet_distance_matches_closed_form():
  rng = np.random.default_rng(0)
  a = rng.integers(0, 256, (4000, 2, 2, 1)).astype(np.uint8)
  assert train.pixel_frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
  b = np.clip(a.astype(int) + 51, 0, 255).astype(np.uint8)  # Shift: mostly mean change.
  x, y = a.reshape(len(a), -1) / 255.0, b.reshape(len(b), -1) / 255.0
  from scipy import linalg  # pylint: disable=g-import-not-at-top
  ca, cb = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
  expected = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.trace(
      ca + cb - 2 * np.real(linalg.sqrtm(ca @ cb)))
  assert train.pixel_frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
  assert train.pixel_frechet_distance(a, b) > 0.1


def test_image_grid_layout():
  images = np.arange(5 * 2 * 2, dtype=np.uint8).reshape(5, 2, 2, 1)
  grid = train.image_grid(images, columns=3, pad=1)
  assert grid.shape == (2 * 3 + 1, 3 * 3 + 1, 1)
  np.testing.assert_array_equal(grid[1:3, 4:6], images[1])
  np.testing.assert_array_equal(grid[4:6, 1:3], images[3])


def test_fid_every_zero_turns_fid_off(tiny_config, tmp_path, monkeypatch):
  from gan_jax import main  # pylint: disable=g-import-not-at-top
  def no_vit(*args, **kwargs):
    raise AssertionError('the ViT was loaded although fid_every=0')
  monkeypatch.setattr(fid_vit, 'VitFid', no_vit)
  tiny_config.fid_every = 0
  main.run(tiny_config, str(tmp_path / 'run'))
  rows = metrics_log.read_jsonl(tmp_path / 'run' / 'metrics.jsonl')
  assert [r['step'] for r in rows if r['split'] == 'eval'] == []
  assert not (tmp_path / 'run' / 'fid_stats').exists()


def test_rerun_of_a_finished_run_keeps_final_json(tiny_config, tmp_path):
  from gan_jax import main  # pylint: disable=g-import-not-at-top
  tiny_config.fid_vit_checkpoint = ''
  workdir = str(tmp_path / 'run')
  first = main.run(tiny_config, workdir)
  saved = json.loads((tmp_path / 'run' / 'final.json').read_text())
  assert saved == first and 'g_loss' in saved
  again = main.run(tiny_config, workdir)  # Already at total_steps: nothing runs.
  assert again == first
  assert json.loads((tmp_path / 'run' / 'final.json').read_text()) == saved


def test_resume_names_the_config_fields_that_changed(tiny_config, tmp_path, caplog):
  from gan_jax import main  # pylint: disable=g-import-not-at-top
  tiny_config.fid_vit_checkpoint = ''
  workdir = str(tmp_path / 'run')
  tiny_config.total_steps = 2
  main.run(tiny_config, workdir)
  assert json.loads((tmp_path / 'run' / 'config.json').read_text())['generator']['width'] == 4
  # Run on: the same command on a finished run would only say that it is complete.
  tiny_config.total_steps = 4
  tiny_config.generator.width = 8  # the checkpoint no longer fits
  with pytest.raises(UserInputError, match=r"(?s)arrays differ.*changed since the last "
                     r"run in this workdir .*: generator\.width 4 -> 8; total_steps 2 -> 4\."):
    main.run(tiny_config, workdir)
  tiny_config.generator.width = 4
  tiny_config.lr_g *= 0.5  # fits: resumed, and said once
  with caplog.at_level('WARNING'):
    main.run(tiny_config, workdir)
  assert 'config fields changed since its last run: lr_g 0.0002 -> 0.0001' in caplog.text
  assert json.loads((tmp_path / 'run' / 'config.json').read_text())['lr_g'] == 0.0001


@pytest.mark.parametrize('field,value,match', [
    ('channels', 3, r'shape \(28, 28, 1\).*channels=3'),
    ('image_size', 32, r'shape \(28, 28, 1\).*image_size=32'),
    ('discriminator', 32, 'config.discriminator.image_size=32')])
def test_model_and_data_shape_mismatch_is_a_user_error(tiny_config, tmp_path, field, value,
                                                       match):
  from gan_jax import main  # pylint: disable=g-import-not-at-top
  if field in ('image_size', 'discriminator'):
    tiny_config.discriminator.image_size = value
  if field != 'discriminator':
    tiny_config.generator[field] = value
  with pytest.raises(UserInputError, match=match):
    main.run(tiny_config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run' / 'checkpoints').exists()


@pytest.mark.parametrize('field, value, message', [
    ('ema_decay', 1.0, r'config.ema_decay=1.0: expected 0 <= ema_decay < 1'),
    ('ema_decay', -0.5, r'config.ema_decay=-0.5: expected 0 <= ema_decay < 1'),
    ('fid_samples', 0, r'config.fid_samples=0: FID needs at least 2 samples'),
])
def test_settings_out_of_range_fail_before_any_work(tiny_config, tmp_path, field, value,
                                                    message):
  from gan_jax import main  # pylint: disable=g-import-not-at-top
  tiny_config.fid_every = 2
  setattr(tiny_config, field, value)
  with pytest.raises(UserInputError, match=message):
    main.run(tiny_config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


@pytest.mark.parametrize('config, message', [
    ([1, 2], r'\[1, 2\] is not a JSON object'),
    ({'family': 'dcgan', 'latent_dim': 0}, r'latent_dim=0, expected a positive integer'),
    ({'family': 'dcgan', 'image_size': '28'}, r"image_size='28', expected a positive integer"),
    ({'family': 'dcgan', 'width': True}, r'width=True, expected a positive integer'),
    ({'family': 'pgan', 'depth_other_scales': 'ab'},
     r"depth_other_scales='ab', expected a list of positive integers"),
    ({'family': 'pgan', 'depth_other_scales': [8, -1]},
     r'depth_other_scales=\[8, -1\], expected a list'),
])
def test_malformed_generator_configs_are_named(config, message):
  with pytest.raises(UserInputError, match=message):
    generators.build(config)
  assert generators.build({'family': 'pgan', 'dim_latent': 8, 'depth_scale0': 4,
                           'depth_other_scales': [4, 2]}).depth_other_scales == (4, 2)
