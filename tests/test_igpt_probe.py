"""Linear probe: logistic regression against scipy, features, per-layer table, the CLI."""

import json

import jax
import numpy as np
import pytest
from PIL import Image
from scipy import optimize

from igpt_jax import checkpoint, probe
from tests.test_igpt_model import random_params, tiny_model
from vision_core import mesh as mesh_lib
from vision_core.errors import UserInputError


def scipy_logreg(x, y, k, l2):
  """The same objective minimised by scipy's L-BFGS-B in float64 (independent reference)."""
  n, d = x.shape
  onehot = np.eye(k)[y]

  def f(theta):
    w, b = theta[:d * k].reshape(d, k), theta[d * k:]
    z = x @ w + b
    z = z - z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    loss = -np.mean((onehot * logp).sum(1)) + 0.5 * l2 * (w * w).sum()
    g = (np.exp(logp) - onehot) / n
    return loss, np.concatenate([(x.T @ g + l2 * w).ravel(), g.sum(0)])

  res = optimize.minimize(f, np.zeros(d * k + k), jac=True, method='L-BFGS-B',
                          options=dict(maxiter=2000, gtol=1e-10, ftol=1e-14))
  return res.x[:d * k].reshape(d, k), res.x[d * k:], res.fun


def test_logistic_regression_matches_scipy():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(300, 6)).astype(np.float32)
  y = (x @ rng.normal(size=(6, 3)) + rng.normal(size=(300, 3))).argmax(1)
  w, b = probe.fit_logreg(x, y, num_classes=3, l2=1e-2, steps=200)
  w_ref, b_ref, loss_ref = scipy_logreg(x.astype(np.float64), y, 3, 1e-2)
  loss = float(probe.logreg_loss(w, b, x, y, 1e-2))
  assert loss == pytest.approx(loss_ref, rel=1e-4)
  # Softmax is invariant to a shift of all classes; compare centred coefficients.
  np.testing.assert_allclose(w - w.mean(1, keepdims=True), w_ref - w_ref.mean(1, keepdims=True),
                             atol=2e-3)
  np.testing.assert_allclose(b - b.mean(), b_ref - b_ref.mean(), atol=2e-3)


def test_features_in_batches_equal_the_models():
  model = tiny_model()
  params = random_params(model)
  tokens = np.random.default_rng(1).integers(0, 512, (10, 16))
  feats = probe.extract_features(model, params, tokens, batch_size=4)  # 4 + 4 + 2 (padded).
  assert feats.shape == (3, 10, 32)
  whole = np.asarray(model.apply({'params': params}, tokens, return_features=True)['features'])
  np.testing.assert_allclose(feats, whole, rtol=1e-5, atol=1e-5)


def test_features_split_over_the_devices_equal_one_devices():
  model = tiny_model()
  params = random_params(model)
  tokens = np.random.default_rng(4).integers(0, 512, (13, 16))
  one = mesh_lib.make_mesh((1, 1), jax.local_devices()[:1])
  alone = probe.extract_features(model, params, tokens, batch_size=5, mesh=one)
  # 8 devices here (conftest): batches of 8 rows (5 rounded up), the second padded from 5.
  assert mesh_lib.data_size(mesh_lib.make_mesh((-1, 1), jax.local_devices())) == 8
  split = probe.extract_features(model, params, tokens, batch_size=5)
  np.testing.assert_allclose(split, alone, rtol=1e-5, atol=1e-6)
  assert probe.extract_features(model, params, tokens[:0]).shape == (3, 0, 32)


def test_probe_finds_the_informative_layer():
  rng = np.random.default_rng(2)
  y_train, y_test = rng.integers(0, 4, 400), rng.integers(0, 4, 200)
  centers = rng.normal(size=(4, 8)) * 3
  def layers(y):
    return np.stack([rng.normal(size=(len(y), 8)), centers[y] + rng.normal(size=(len(y), 8))])
  rows = probe.probe_layers(layers(y_train), y_train, layers(y_test), y_test, num_classes=4,
                            l2_grid=(1e-3, 1e-1), steps=100)
  assert rows[1]['test_accuracy'] > 0.9 and rows[0]['test_accuracy'] < 0.45
  table = probe.format_table(rows, num_blocks=1)
  assert '| 1 | ln_f |' in table and '| 0 | block 0 ln_1 |' in table


def test_features_of_chosen_layers_only_and_into_a_given_array(tmp_path):
  model = tiny_model()
  params = random_params(model)
  tokens = np.random.default_rng(1).integers(0, 512, (10, 16))
  whole = np.asarray(model.apply({'params': params}, tokens, return_features=True)['features'])
  feats = probe.extract_features(model, params, tokens, batch_size=4, layers=[2, 0])
  assert feats.shape == (2, 10, 32)
  np.testing.assert_allclose(feats, whole[[2, 0]], rtol=1e-5, atol=1e-5)
  out = np.lib.format.open_memmap(tmp_path / 'f.npy', mode='w+', dtype=np.float32,
                                  shape=(3, 10, 32))
  assert probe.extract_features(model, params, tokens, batch_size=4, out=out) is out
  out.flush()
  np.testing.assert_allclose(np.load(tmp_path / 'f.npy'), whole, rtol=1e-5, atol=1e-5)


def _probe_cli_inputs(tmp_path):
  """Two colour classes of 4x4 images, a tiny model's params and a palette; the CLI args."""
  rng = np.random.default_rng(3)
  for split, n in (('train', 20), ('test', 10)):
    for label, color in (('red', (200, 30, 30)), ('blue', (30, 30, 200))):
      folder = tmp_path / 'data' / split / label
      folder.mkdir(parents=True)
      for i in range(n):
        image = np.clip(np.array(color) + rng.normal(0, 20, (4, 4, 3)), 0, 255)
        Image.fromarray(image.astype(np.uint8)).save(folder / f'{i}.png')
  model = tiny_model()
  checkpoint.save(tmp_path / 'params.npz', random_params(model))
  np.save(tmp_path / 'palette.npy', rng.uniform(-1, 1, (512, 3)).astype(np.float32))
  return ['--params', str(tmp_path / 'params.npz'), '--palette', str(tmp_path / 'palette.npy'),
          '--dataset', str(tmp_path / 'data'), '--l2', '0.01', '--steps', '30', '--out',
          str(tmp_path / 'out')]  # --image_size: the model's 4 (n_ctx 16).


def test_cli_writes_table_json_and_plot(tmp_path, capsys):
  args = _probe_cli_inputs(tmp_path)
  probe.main(args)
  rows = json.loads((tmp_path / 'out' / 'probe.json').read_text())
  assert [r['layer'] for r in rows] == [0, 1, 2]
  assert (tmp_path / 'out' / 'probe.png').stat().st_size > 1000
  assert '| 2 | ln_f |' in (tmp_path / 'out' / 'probe.md').read_text()
  with pytest.raises(SystemExit) as e:  # Outputs exist: refuses without --force.
    probe.main(args)
  assert e.value.code == 2
  with pytest.raises(SystemExit):
    probe.main(args[:-1] + [str(tmp_path / 'out2'), '--image_size', '8'])  # 64 > n_ctx 16.
  # An unreadable file: an error that names it and says to skip; --skip_bad_images skips it.
  (tmp_path / 'data' / 'test' / 'red' / 'notes.png').write_text('not an image')
  with pytest.raises(SystemExit) as e:
    probe.main(args[:-1] + [str(tmp_path / 'out3')])
  assert e.value.code == 2 and 'notes.png: not a readable image' in capsys.readouterr().err
  probe.main(args[:-1] + [str(tmp_path / 'out3'), '--skip_bad_images'])
  assert (tmp_path / 'out3' / 'probe.json').exists()


def test_cli_layers_keep_only_those_features_and_give_their_rows(tmp_path, monkeypatch,
                                                                  capsys):
  args = _probe_cli_inputs(tmp_path)
  held = []
  fit = probe.probe_layers

  def recording(train, train_labels, test, *rest, **kwargs):  # What the fits were given.
    held.append((type(train), train.shape, test.shape))
    return fit(train, train_labels, test, *rest, **kwargs)

  monkeypatch.setattr(probe, 'probe_layers', recording)
  probe.main(args)
  every = json.loads((tmp_path / 'out' / 'probe.json').read_text())
  out = str(tmp_path / 'chosen')
  probe.main(args[:-1] + [out, '--layers', '2', '1', '1'])
  chosen = json.loads((tmp_path / 'chosen' / 'probe.json').read_text())
  assert chosen == every[1:]  # The same probes, the others not run.
  assert '| 2 | ln_f |' in (tmp_path / 'chosen' / 'probe.md').read_text()
  probe.main(args[:-1] + [str(tmp_path / 'disk'), '--layers', '1', '--features_on_disk'])
  assert json.loads((tmp_path / 'disk' / 'probe.json').read_text()) == every[1:2]
  assert sorted(p.name for p in (tmp_path / 'disk').iterdir()) == [
      'probe.json', 'probe.md', 'probe.png']  # The feature files were scratch.
  assert held == [(np.ndarray, (3, 40, 32), (3, 20, 32)), (np.ndarray, (2, 40, 32), (2, 20, 32)),
                  (np.memmap, (1, 40, 32), (1, 20, 32))]
  with pytest.raises(SystemExit) as e:
    probe.main(args[:-1] + [str(tmp_path / 'bad'), '--layers', '1', '3'])
  assert e.value.code == 2
  assert '--layers=3: expected layers 0 to 2 (the model has 2 blocks; 2 is ln_f)' in (
      capsys.readouterr().err)


def test_cli_refuses_one_class_and_checks_outputs_before_any_work(tmp_path, capsys):
  rng = np.random.default_rng(4)
  for split in ('train', 'test'):
    folder = tmp_path / 'data' / split / 'only'
    folder.mkdir(parents=True)
    for i in range(5):
      Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).save(folder / f'{i}.png')
  checkpoint.save(tmp_path / 'params.npz', random_params(tiny_model()))
  np.save(tmp_path / 'palette.npy', rng.uniform(-1, 1, (512, 3)).astype(np.float32))
  args = ['--params', str(tmp_path / 'params.npz'), '--palette', str(tmp_path / 'palette.npy'),
          '--dataset', str(tmp_path / 'data'), '--image_size', '4', '--l2', '0.01', '--steps',
          '5', '--out', str(tmp_path / 'out')]
  with pytest.raises(SystemExit) as e:  # One class: every "accuracy" was 100%.
    probe.main(args)
  assert e.value.code == 2 and 'has 1 class(es)' in capsys.readouterr().err
  assert not (tmp_path / 'out' / 'probe.md').exists()
  with pytest.raises(UserInputError, match='at least 2 classes'):
    probe.probe_layers(np.zeros((1, 4, 2)), np.zeros(4, int), np.zeros((1, 2, 2)),
                       np.zeros(2, int), num_classes=1, steps=2)
  with pytest.raises(UserInputError, match='1 training example'):
    probe.probe_layers(np.zeros((1, 1, 2)), np.zeros(1, int), np.zeros((1, 2, 2)),
                       np.zeros(2, int), num_classes=2, steps=2)
  # One output already there: refused up front, the others not written (probe.md was).
  (tmp_path / 'out').mkdir()
  (tmp_path / 'out' / 'probe.json').write_text('[]')
  with pytest.raises(SystemExit) as e:
    probe.main(args)
  assert e.value.code == 2 and 'probe.json already exists' in capsys.readouterr().err
  assert not (tmp_path / 'out' / 'probe.md').exists()
  for bad, message in ((['--train_examples', '-1'], '--train_examples=-1'),
                       # 2x2 images to a 4x4 model: pixel rows in the wrong positions.
                       (['--image_size', '2', '--force'], 'trained on 4x4 images (n_ctx=16); pass '
                        '--image_size 4'),
                       (['--out', str(tmp_path / 'palette.npy')], 'is a file')):
    with pytest.raises(SystemExit):
      probe.main(args + bad)
    assert message in capsys.readouterr().err
