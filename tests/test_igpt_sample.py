"""Sampling: cached == uncached tokens, kept rows untouched, filters, grids, clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igpt_jax import sample as igpt_sample
from tests.test_igpt_model import random_params, tiny_model
from vision_core import mesh as mesh_lib
from vision_core.errors import UserInputError


@pytest.fixture(scope='module')
def model_and_params():
  model = tiny_model(n_ctx=16)
  return model, random_params(model, seed=7)


@pytest.mark.parametrize('prefix_len,kwargs', [
    (0, {}),  # two cache spans: [0, 8), [8, 16)
    (6, dict(top_k=5)),
    (1, dict(top_k=40, top_p=0.9, temperature=1.3)),
    (9, {}),  # the prefix ends in the second span
    (3, dict(cache_segments=1)),  # one scan over the whole cache
])
def test_cached_sampling_gives_exactly_the_uncached_tokens(model_and_params, prefix_len, kwargs):
  model, params = model_and_params
  key = jax.random.PRNGKey(11)
  prefix = jax.random.randint(jax.random.PRNGKey(3), (4, prefix_len), 0, 512)
  cached = igpt_sample.make_sampler(model, num_tokens=16, prefix_len=prefix_len, **kwargs)
  uncached = igpt_sample.make_sampler(model, num_tokens=16, prefix_len=prefix_len,
                                      cached=False, **kwargs)
  a = np.asarray(cached(params, key, prefix))
  b = np.asarray(uncached(params, key, prefix))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(a[:, :prefix_len], prefix)
  assert len(np.unique(a[:, prefix_len:])) > 4  # Really sampled, not a constant.
  # Another key gives other tokens.
  c = np.asarray(cached(params, jax.random.PRNGKey(12), prefix))
  assert not np.array_equal(a, c)


@pytest.mark.parametrize('start,stop,segments', [
    (0, 1024, 8), (512, 1024, 8), (5, 16, 8), (0, 100, 8), (99, 100, 3), (0, 7, 1), (3, 64, 64)])
def test_cache_spans_cover_the_sampled_positions_once(start, stop, segments):
  spans = igpt_sample.cache_spans(start, stop, segments)
  positions = [t for lo, hi in spans for t in range(lo, hi)]
  assert positions == list(range(start, stop))
  assert len(spans) <= segments
  assert all(hi % 8 == 0 or hi == stop for _, hi in spans)  # few distinct cache lengths
  if (start, stop, segments) == (0, 1024, 8):
    assert spans == [(i, i + 128) for i in range(0, 1024, 128)]


def test_completions_keep_the_top_rows(model_and_params):
  model, params = model_and_params
  tokens = jax.random.randint(jax.random.PRNGKey(5), (2, 16), 0, 512)
  out = np.asarray(igpt_sample.complete(model, params, jax.random.PRNGKey(0), tokens,
                                        image_shape=(4, 4), keep_rows=2, num_completions=3))
  assert out.shape == (2, 3, 16)
  for i in range(2):
    for j in range(3):
      np.testing.assert_array_equal(out[i, j, :8], tokens[i, :8])
  assert not np.array_equal(out[0, 0, 8:], out[0, 1, 8:])  # N different completions.
  # A typed key (jax.random.key, JAX's recommended kind) draws as its raw data does.
  typed = igpt_sample.complete(model, params, jax.random.key(0), tokens, image_shape=(4, 4),
                               keep_rows=2, num_completions=3)
  np.testing.assert_array_equal(typed, out)


def test_filters_match_their_definitions():
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 50)) * 2, jnp.float32)
  top_k = np.asarray(igpt_sample.filter_logits(logits, top_k=7))
  for row, ref in zip(top_k, np.asarray(logits)):
    kept = np.isfinite(row)
    assert kept.sum() == 7
    np.testing.assert_array_equal(np.sort(np.where(kept)[0]), np.sort(np.argsort(-ref)[:7]))
  top_p = np.asarray(igpt_sample.filter_logits(logits, top_p=0.6, temperature=0.5))
  for row, ref in zip(top_p, np.asarray(logits) / 0.5):
    order = np.argsort(-ref)
    p = np.exp(ref[order] - ref.max())
    p /= p.sum()
    n = int(np.searchsorted(np.cumsum(p), 0.6) + 1)  # Smallest prefix with mass >= 0.6.
    np.testing.assert_array_equal(np.sort(np.where(np.isfinite(row))[0]), np.sort(order[:n]))
    np.testing.assert_allclose(row[order[:n]], ref[order[:n]], rtol=1e-6)


def test_a_completion_does_not_depend_on_the_batch_or_the_other_images(model_and_params):
  model, params = model_and_params
  tokens = jax.random.randint(jax.random.PRNGKey(5), (3, 16), 0, 512)
  key = jax.random.PRNGKey(9)
  run = lambda t, **k: np.asarray(igpt_sample.complete(
      model, params, key, t, image_shape=(4, 4), keep_rows=2, num_completions=2, top_k=50,
      **k))
  together = run(tokens)
  np.testing.assert_array_equal(run(tokens, batch_size=1), together)
  np.testing.assert_array_equal(run(tokens, batch_size=4), together)  # 6 rows: 4 + 2 padded
  np.testing.assert_array_equal(run(tokens[:1]), together[:1])  # image 0 alone
  # Row keys: fold_in(key, row); a row's tokens are those of that row sampled alone.
  sampler = igpt_sample.make_sampler(model, num_tokens=16, top_k=50)
  all_rows = np.asarray(sampler(params, key, batch_size=3))
  keys = igpt_sample.row_keys(key, 3)
  np.testing.assert_array_equal(np.asarray(sampler(params, keys[2:], jnp.zeros((1, 0), jnp.int32))),
                                all_rows[2:])


def test_completions_split_over_the_devices_equal_one_devices(model_and_params):
  model, params = model_and_params
  tokens = jax.random.randint(jax.random.PRNGKey(6), (3, 16), 0, 512)
  run = lambda **k: np.asarray(igpt_sample.complete(
      model, params, jax.random.PRNGKey(4), tokens, image_shape=(4, 4), keep_rows=1,
      num_completions=3, top_k=50, **k))
  one = run(batch_size=4, mesh=mesh_lib.make_mesh((1, 1), jax.local_devices()[:1]))
  # 8 devices here (conftest): 9 rows in batches of 8 (4 rounded up), the second padded.
  assert len(jax.local_devices()) == 8
  np.testing.assert_array_equal(run(batch_size=4), one)
  np.testing.assert_array_equal(run(mesh=mesh_lib.make_mesh((4, 2))), one)
  sampler = igpt_sample.make_sampler(model, num_tokens=16, prefix_len=4)
  with pytest.raises(UserInputError, match=r'sample: rows=3 is not divisible by the 8 devices'):
    sampler(params, jax.random.PRNGKey(0), np.zeros((3, 4), np.int32),
            mesh=mesh_lib.make_mesh((8, 1)))


def test_sampled_frequencies_follow_the_filtered_softmax():
  logits = jnp.asarray([[2.0, 1.0, 0.5, 0.0, -1.0, -3.0]])
  keys = jax.random.split(jax.random.PRNGKey(0), 20_000)
  draw = jax.vmap(lambda k: jax.random.categorical(
      k, igpt_sample.filter_logits(logits, top_k=4)[0]))
  counts = np.bincount(np.asarray(draw(keys)), minlength=6) / 20_000
  p = np.exp([2.0, 1.0, 0.5, 0.0])
  p /= p.sum()
  np.testing.assert_allclose(counts[:4], p, atol=0.015)
  assert counts[4:].sum() == 0


def test_grid_layout():
  rng = np.random.default_rng(0)
  originals = rng.integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
  completions = rng.integers(0, 256, (2, 3, 4, 4, 3), dtype=np.uint8)
  grid = igpt_sample.completion_grid(originals, completions, keep_rows=2, pad=1)
  assert grid.shape == (2 * 5 + 1, 5 * 5 + 1, 3)
  np.testing.assert_array_equal(grid[1:5, 1:5], originals[0])
  np.testing.assert_array_equal(grid[1:3, 6:10], originals[0, :2])
  assert (grid[3:5, 6:10] == 128).all()
  np.testing.assert_array_equal(grid[6:10, 16:20], completions[1, 1])


def test_bad_requests_are_clear_errors(model_and_params, tmp_path):
  model, params = model_and_params
  with pytest.raises(UserInputError, match='num_tokens=64: the model\'s n_ctx is 16'):
    igpt_sample.make_sampler(model, num_tokens=64)
  tokens = jnp.zeros((1, 16), jnp.int32)
  for rows in (0, 4, -1):
    with pytest.raises(UserInputError, match=f'keep_rows={rows}: expected 1 <= keep_rows < 4'):
      igpt_sample.complete(model, params, jax.random.PRNGKey(0), tokens, image_shape=(4, 4),
                           keep_rows=rows)
  with pytest.raises(UserInputError, match=r'expected \[B, 16\] for 4x4 images'):
    igpt_sample.complete(model, params, jax.random.PRNGKey(0), tokens[:, :9],
                         image_shape=(4, 4), keep_rows=2)
  with pytest.raises(UserInputError, match=r'^num_completions=0: expected at least 1\.$'):
    igpt_sample.complete(model, params, jax.random.PRNGKey(0), tokens, image_shape=(4, 4),
                         keep_rows=2, num_completions=0)
  sampler = igpt_sample.make_sampler(model, num_tokens=16, prefix_len=4)
  with pytest.raises(UserInputError, match=r'prefix: expected \[B, 4\]'):
    sampler(params, jax.random.PRNGKey(0), tokens[:, :3])
  for bad, message in ((tokens[:, :4] + 600, r'tokens must be in \[0, 512\), found \[600, '),
                       (tokens[:, :4] - 1, r'tokens must be in .*, found \[-1, -1\]'),
                       (tokens[:, :4] + 0.5, r'expected integer tokens, found float32')):
    with pytest.raises(UserInputError, match=rf'^prefix: {message}'):
      sampler(params, jax.random.PRNGKey(0), bad)
  igpt_sample.save_png(tmp_path / 'g.png', np.zeros((4, 4, 3), np.uint8))
  with pytest.raises(UserInputError, match='refusing to overwrite'):
    igpt_sample.save_png(tmp_path / 'g.png', np.zeros((4, 4, 3), np.uint8))


@pytest.mark.parametrize('kwargs, field', [
    (dict(top_p=0.0), 'top_p=0.0'), (dict(top_p=1.5), 'top_p=1.5'),
    (dict(top_k=-1), 'top_k=-1'), (dict(top_k=513), 'top_k=513'),
    (dict(temperature=0.0), 'temperature=0.0'), (dict(temperature=-1.0), 'temperature=-1.0')])
def test_filters_that_leave_nothing_to_draw_are_clear_errors(model_and_params, kwargs, field):
  # Unchecked, top_p=0 masked every token (categorical then always drew token 0), a negative
  # temperature silently became greedy and top_k > vocab failed deep inside lax.top_k.
  model, _ = model_and_params
  with pytest.raises(UserInputError, match=field):
    igpt_sample.make_sampler(model, num_tokens=16, **kwargs)


def test_complete_cli(model_and_params, tmp_path):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from igpt_jax import checkpoint, complete  # pylint: disable=g-import-not-at-top
  model, params = model_and_params
  rng = np.random.default_rng(0)
  (tmp_path / 'imgs').mkdir()
  for i in range(2):
    Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(
        tmp_path / 'imgs' / f'{i}.png')
  checkpoint.save(tmp_path / 'p.npz', params)
  np.save(tmp_path / 'pal.npy', rng.uniform(-1, 1, (512, 3)).astype(np.float32))
  common = ['--params', str(tmp_path / 'p.npz'), '--palette', str(tmp_path / 'pal.npy'),
            '--size', '4']
  complete.main(common + ['--images', str(tmp_path / 'imgs'), '--num', '3', '--out',
                          str(tmp_path / 'c.png')])
  grid = np.asarray(Image.open(tmp_path / 'c.png'))
  assert grid.shape == (2 * 6 + 2, 5 * 6 + 2, 3)
  # Kept rows of each completion are the original's (palette-dequantised) pixels.
  np.testing.assert_array_equal(grid[2:4, 2 + 2 * 6:6 + 2 * 6], grid[2:4, 2:6])
  complete.main(common + ['--unconditional', '3', '--out', str(tmp_path / 'u.png')])
  assert np.asarray(Image.open(tmp_path / 'u.png')).shape == (6 + 2, 3 * 6 + 2, 3)
  with pytest.raises(SystemExit) as e:
    complete.main(common + ['--images', str(tmp_path / 'imgs'), '--keep_rows', '9', '--out',
                            str(tmp_path / 'bad.png')])
  assert e.value.code == 2 and not (tmp_path / 'bad.png').exists()


def test_complete_cli_checks_counts_and_size(model_and_params, tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from igpt_jax import checkpoint, complete  # pylint: disable=g-import-not-at-top
  _, params = model_and_params  # n_ctx 16: 4x4 images.
  (tmp_path / 'imgs').mkdir()
  Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / 'imgs' / 'a.png')
  checkpoint.save(tmp_path / 'p.npz', params)
  np.save(tmp_path / 'pal.npy', np.random.default_rng(0).uniform(-1, 1, (512, 3)).astype(
      np.float32))
  common = ['--params', str(tmp_path / 'p.npz'), '--palette', str(tmp_path / 'pal.npy')]
  bad = [(['--unconditional', '0'], '--unconditional=0: expected at least 1'),
         (['--unconditional', '-2'], '--unconditional=-2'),
         (['--images', str(tmp_path / 'imgs'), '--num', '0'], '--num=0'),
         (['--unconditional', '1', '--size', '2'], 'trained on 4x4 images'),
         (['--unconditional', '1', '--size', '5'], 'at most n_ctx=16'),
         (['--unconditional', '1', '--seed', str(2**32 + 5)], '--seed=4294967301'),
         (['--unconditional', '1', '--seed', '-1'], '--seed=-1'),
         (['--unconditional', '1', '--batch', '0'], '--batch=0: expected at least 1')]
  for args, message in bad:
    with pytest.raises(SystemExit) as e:
      complete.main(common + args + ['--out', str(tmp_path / 'bad.png')])
    assert e.value.code == 2 and message in capsys.readouterr().err, args
  assert not (tmp_path / 'bad.png').exists()
  # Without --size, the model's own side (4) is used.
  complete.main(common + ['--images', str(tmp_path / 'imgs'), '--num', '2', '--out',
                          str(tmp_path / 'c.png')])
  assert np.asarray(Image.open(tmp_path / 'c.png')).shape == (6 + 2, 4 * 6 + 2, 3)


def test_params_without_a_language_model_head_warn_once_per_call(model_and_params):
  """An all-zero wtet (checkpoint.load(..., need_lm_head=False) of an HF ImageGPTModel save,
  or an untrained model) gives zero logits: every entry used to sample uniform noise
  without a word. It now warns, once per call; params with a head do not."""
  import warnings  # pylint: disable=g-import-not-at-top
  model, params = model_and_params
  headless = {**params, 'wtet': jnp.zeros_like(params['wtet'])}
  tokens = jnp.zeros((2, 16), jnp.int32)
  key = jax.random.PRNGKey(0)
  sampler = igpt_sample.make_sampler(model, num_tokens=16, prefix_len=8)
  calls = {
      'complete': lambda p: igpt_sample.complete(model, p, key, tokens, image_shape=(4, 4),
                                                 keep_rows=2, batch_size=1),
      'sampler': lambda p: sampler(p, key, tokens[:, :8]),
      'sample_in_batches': lambda p: igpt_sample.sample_in_batches(
          sampler, p, igpt_sample.row_keys(key, 2), tokens[:, :8], batch_size=1)}
  for name, call in calls.items():
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter('always')
      noise = np.asarray(call(headless))
    messages = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(messages) == 1, (name, messages)  # complete: two batches, one warning
    assert messages[0].startswith('params: the language-model head wtet is all zero'), name
    assert noise.shape[-1] == 16, name  # still sampled: a demo of an untrained model runs
    with warnings.catch_warnings():
      warnings.simplefilter('error')  # the same call with a head: no warning
      assert np.asarray(call(params)).shape[-1] == 16, name
