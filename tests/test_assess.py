"""The assessment report end to end, on a tiny ViT checkpoint written in the official layout."""

import csv
import io
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image
import skimage.metrics
import skimage.util
from skimage import data

from vision_core import images as images_lib
from vision_core.errors import UserInputError
from vit_jax import assess, checkpoint, metrics, models_vit
from vit_jax.configs.models import get_model_config


@pytest.fixture(scope='module')
def tiny_checkpoint(tmp_path_factory):
  model = models_vit.VisionTransformer(num_classes=20, **get_model_config('testing'))
  # Jitted: op by op, every op of the init compiled afresh.
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))['params']
  params = jax.tree.map(np.asarray, dict(params))
  params['head'] = {'kernel': np.random.default_rng(0).normal(size=(10, 20)).astype(np.float32),
                    'bias': np.zeros(20, np.float32)}
  path = tmp_path_factory.mktemp('ckpt') / 'tiny.npz'
  checkpoint.save(path, params)
  return str(path), model, params


def _jpeg(image, quality):
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format='JPEG', quality=quality)
  return buf.getvalue()


def _dataset(root):
  """3 pairs: RGB, RGBA original, grey; one reconstruction at another size; JPEG bytes."""
  orig, recon, comp = root / 'orig', root / 'recon', root / 'comp'
  for d in (orig, recon, comp):
    d.mkdir()
  images = {'astro': data.astronaut()[:48, 100:164], 'coffee': data.coffee()[50:98, 200:264],
            'cam': data.camera()[100:148, 100:164]}
  for name, im in images.items():
    encoded = _jpeg(im, 20)
    (comp / f'{name}.jpg').write_bytes(encoded)
    Image.open(io.BytesIO(encoded)).save(recon / f'{name}.png')
    if name == 'coffee':  # RGBA original, alpha 0..252 across: composited on white.
      alpha = np.broadcast_to(np.arange(0, 256, 4, dtype=np.uint8), im.shape[:2])
      Image.fromarray(np.dstack([im, alpha])).save(orig / f'{name}.png')
      white = Image.new('RGBA', im.shape[1::-1], (255, 255, 255, 255))
      shown = Image.alpha_composite(white, Image.open(orig / f'{name}.png')).convert('RGB')
      images[name] = np.asarray(shown)  # What a viewer shows, by Pillow's own compositing.
    else:
      Image.fromarray(im).save(orig / f'{name}.png')
  Image.open(recon / 'cam.png').resize((70, 50)).save(recon / 'cam.png')  # Needs --resize.
  return orig, recon, comp, images


def _run(orig, recon, ckpt, out, *extra):
  assess.main(['--originals', str(orig), '--reconstructions', str(recon), '--checkpoint', ckpt,
               '--out', str(out), '--k', '5', *extra])


def test_report_matches_direct_metrics(tiny_checkpoint, tmp_path, shared_data, monkeypatch):
  ckpt, model, params = tiny_checkpoint
  orig, recon, comp, images = _dataset(tmp_path)
  out = tmp_path / 'out'
  with pytest.raises(UserInputError, match='--resize'):
    _run(orig, recon, ckpt, out)
  assert not out.exists()  # Nothing written on error.
  model_yml = str(shared_data / 'brisque' / 'brisque_model_live.yml')
  range_yml = str(shared_data / 'brisque' / 'brisque_range_live.yml')
  args = ('--resize', '--compressed', str(comp), '--brisque-model', model_yml,
          '--brisque-range', range_yml)
  _run(orig, recon, ckpt, out, *args)
  rows = {r['image']: r for r in csv.DictReader(open(out / 'report.csv'))}
  assert sorted(rows) == ['astro', 'cam', 'coffee']
  from vit_jax import assess_io
  composited, _ = assess_io.read_for_metrics(str(orig / 'coffee.png'))
  assert np.abs(composited.astype(int) - images['coffee']).max() <= 1  # Rounding only.
  images['coffee'] = composited
  for name in ('astro', 'coffee'):
    a = images[name][None]
    b = np.asarray(Image.open(recon / f'{name}.png'))[None]
    row = {k: float(v) for k, v in rows[name].items() if k not in ('image', 'notes')}
    assert row['ssim'] == pytest.approx(float(metrics.ssim(a, b, data_range=255.0)[0]), abs=1e-6)
    assert row['psnr_db'] == pytest.approx(float(metrics.psnr(a, b, data_range=255.0)[0]))
    assert row['mse'] == pytest.approx(float(metrics.mse(a, b)[0]))
    assert row['pixel_row_fid'] == pytest.approx(float(metrics.pixel_row_fid(a, b)[0]))
    assert row['vit_score'] == pytest.approx(
        metrics.vit_score(a, b, model, params, k=5, image_size=32)[0])
    assert row['brisque_original'] == pytest.approx(
        metrics.brisque(a, model_yml, range_yml)[0], abs=1e-9)
    size = (comp / f'{name}.jpg').stat().st_size
    assert row['bits_per_pixel'] == pytest.approx(8 * size / (48 * 64))
    assert row['compression_ratio'] == pytest.approx(48 * 64 * 3 / size)
  assert 'alpha composited on grey level 255' in rows['coffee']['notes']
  assert 'resized from 70x50' in rows['cam']['notes']
  report = (out / 'report.md').read_text()
  for text in ('chance level 5/20 = 0.250', 'FID on ViT pre-logit', 'Raw-pixel FID: not computed',
               '## Conventions', 'alpha channel'):
    assert text in report
  assert (out / 'report.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  # Existing reports are kept unless --force.
  with pytest.raises(UserInputError, match='--force'):
    _run(orig, recon, ckpt, out, '--resize')
  _run(orig, recon, ckpt, out, '--resize', '--force')
  assert 'brisque_original' not in (out / 'report.csv').read_text()
  # A --force run (with the compressed files: other columns) that fails while writing its
  # last report leaves the old set whole, and no temporary files. (Not another --k: each k
  # is another compiled ViT-Score program.)
  before = {name: (out / name).read_bytes() for name in assess.OUTPUTS}
  from vit_jax import assess_report
  monkeypatch.setattr(assess_report, 'figure_png', lambda *a, **k: 'not bytes')
  with pytest.raises(TypeError):
    _run(orig, recon, ckpt, out, '--resize', '--force', '--compressed', str(comp))
  assert {name: (out / name).read_bytes() for name in assess.OUTPUTS} == before
  assert sorted(os.listdir(out)) == sorted(assess.OUTPUTS)


def test_bad_inputs_are_clear_messages(tiny_checkpoint, tmp_path):
  ckpt, _, _ = tiny_checkpoint
  orig, recon = tmp_path / 'o', tmp_path / 'r'
  orig.mkdir()
  recon.mkdir()
  # The checkpoint is checked first, before the (here empty) folders are read.
  with pytest.raises(UserInputError, match=r'--checkpoint \S*nope\.npz: no such file'):
    _run(orig, recon, str(tmp_path / 'nope.npz'), tmp_path / 'out')
  with pytest.raises(UserInputError, match='no images found'):
    _run(orig, recon, ckpt, tmp_path / 'out')
  im = data.astronaut()[:32, :32]
  Image.fromarray(im).save(orig / 'a.png')
  Image.fromarray(im).save(orig / 'b.png')
  Image.fromarray(im).save(recon / 'a.png')
  with pytest.raises(UserInputError, match=r'no reconstruction .* b\.png'):
    _run(orig, recon, ckpt, tmp_path / 'out')
  Image.fromarray(im[..., 0]).save(recon / 'b.png')
  with pytest.raises(UserInputError, match='grey .* colour'):
    _run(orig, recon, ckpt, tmp_path / 'out')
  Image.fromarray(np.full((32, 32), np.nan, np.float32)).save(recon / 'b.tiff')
  (recon / 'b.png').unlink()
  with pytest.raises(UserInputError, match='NaN'):
    _run(orig, recon, ckpt, tmp_path / 'out')
  (recon / 'b.tiff').unlink()
  Image.fromarray(im).save(recon / 'b.png')
  with pytest.raises(UserInputError, match='do not match the model'):
    assess.main(['--originals', str(orig), '--reconstructions', str(recon), '--checkpoint',
                 ckpt, '--out', str(tmp_path / 'out'), '--model', 'ViT-B_16'])
  # The default --k 100 is for ImageNet heads; this one has 20 classes.
  with pytest.raises(UserInputError, match=r"^--k 100: expected 1 <= k <= 20, the classes of "
                     r"\S*tiny\.npz's head \(pass e\.g\. --k 6\)"):
    assess.main(['--originals', str(orig), '--reconstructions', str(recon), '--checkpoint',
                 ckpt, '--out', str(tmp_path / 'out')])
  assert not (tmp_path / 'out').exists()
  # --force replaces old reports, not an input that has a report's name.
  Image.fromarray(im).save(orig / 'report.png')
  Image.fromarray(im).save(recon / 'report.png')
  kept = (orig / 'report.png').read_bytes()
  with pytest.raises(UserInputError, match=r'^--out \S*report\.png is also \S*report\.png, an '
                     'input or output of this run'):
    assess.main(['--originals', str(orig), '--reconstructions', str(recon), '--checkpoint',
                 ckpt, '--out', str(orig), '--force', '--k', '3'])
  assert (orig / 'report.png').read_bytes() == kept


def test_originals_of_different_sizes_get_the_set_fid_of_their_prelogits(tiny_checkpoint,
                                                                         tmp_path):
  """The set-level FID on ViT pre-logits for originals of several sizes (it stacked every
  image into one batch and failed with numpy's "all input arrays must have the same shape").
  Reference: each image resized and embedded alone."""
  ckpt, model, params = tiny_checkpoint
  orig, recon = tmp_path / 'orig', tmp_path / 'recon'
  orig.mkdir()
  recon.mkdir()
  crops = {'astro': data.astronaut()[:48, :64], 'coffee': data.coffee()[:40, :50],
           'cat': data.chelsea()[:40, :50]}
  for name, im in crops.items():
    Image.fromarray(im).save(orig / f'{name}.png')
    Image.open(io.BytesIO(_jpeg(im, 10))).save(recon / f'{name}.png')
  _run(orig, recon, ckpt, tmp_path / 'out')
  report = (tmp_path / 'out' / 'report.md').read_text()
  found = re.search(r'FID on ViT pre-logit features \(.*\): \*\*([0-9.e+-]+)\*\*', report)
  assert found, report

  @jax.jit  # one program per image size: op by op, every op compiled afresh
  def prelogits(x):
    x = jax.image.resize(x, (1, 32, 32, 3), 'bilinear', antialias=True)
    return model.apply({'params': params}, (x - 127.5) / 127.5, return_prelogits=True)

  def embed(path):
    x = jnp.asarray(np.asarray(Image.open(path)), jnp.float32)[None]
    return np.asarray(prelogits(x), np.float64)[0]
  names = sorted(crops)
  expected = metrics.fid(np.stack([embed(orig / f'{n}.png') for n in names]),
                         np.stack([embed(recon / f'{n}.png') for n in names]))
  assert float(found.group(1)) == pytest.approx(expected, rel=1e-3, abs=1e-4)
  assert 'Raw-pixel FID: not computed' in report


def test_checkpoint_with_model_json_beside_it(tmp_path):
  """A `vit_jax.main` checkpoint (model.npz + model.json, as the shipped CIFAR-10 ViT) whose
  shapes match no registered model is rebuilt from its model.json."""
  import json
  config = {'model_name': 'ViT-p4-w12-l2', 'classifier': 'token', 'hidden_size': 12,
            'patches': {'size': [4, 4]}, 'representation_size': None,
            'transformer': {'attention_dropout_rate': 0.0, 'dropout_rate': 0.0, 'mlp_dim': 24,
                            'num_heads': 2, 'num_layers': 2}}
  import ml_collections
  model = models_vit.VisionTransformer(num_classes=7, **ml_collections.ConfigDict(config))
  params = jax.jit(model.init)(jax.random.PRNGKey(1), jnp.zeros((1, 32, 32, 3)))['params']
  params = jax.tree.map(np.asarray, dict(params))
  params['head'] = {'kernel': np.random.default_rng(1).normal(size=(12, 7)).astype(np.float32),
                    'bias': np.zeros(7, np.float32)}
  ckpt = tmp_path / 'run' / 'model.npz'
  ckpt.parent.mkdir()
  checkpoint.save(ckpt, params)
  (tmp_path / 'run' / 'model.json').write_text(json.dumps(
      {'model_name': config['model_name'], 'model': config, 'num_classes': 7,
       'class_names': [str(i) for i in range(7)], 'resolution': 32}))
  orig, recon = tmp_path / 'o', tmp_path / 'r'
  orig.mkdir()
  recon.mkdir()
  a = data.astronaut()[:32, 100:132]
  b = data.astronaut()[:32, 110:142]
  Image.fromarray(a).save(orig / 'x.png')
  Image.fromarray(b).save(recon / 'x.png')
  assess.main(['--originals', str(orig), '--reconstructions', str(recon), '--checkpoint',
               str(ckpt), '--out', str(tmp_path / 'out'), '--k', '3'])
  row = next(csv.DictReader(open(tmp_path / 'out' / 'report.csv')))
  expected = metrics.vit_scores(a[None], b[None], model, params, k=3, image_size=32)
  assert float(row['vit_score']) == pytest.approx(float(expected['top_k'][0]))
  assert float(row['vit_prelogit_cosine']) == pytest.approx(float(expected['cosine'][0]), abs=1e-4)
  assert 'ViT-p4-w12-l2' in (tmp_path / 'out' / 'report.md').read_text()


def test_dark_16_bit_image_is_scaled_like_any_16_bit_image(tmp_path):
  from vit_jax import assess_io
  values = np.random.default_rng(0).integers(0, 250, (20, 20), dtype=np.uint16)
  Image.fromarray(values).save(tmp_path / 'dark16.png')  # 16-bit, all values <= 255.
  got, notes = assess_io.read_for_metrics(str(tmp_path / 'dark16.png'))
  # The high byte, as every reader of the project takes it (and scikit-image's img_as_ubyte
  # on full-range data; on data this dark it would not scale at all).
  np.testing.assert_array_equal(got[..., 0], (values >> 8).astype(np.uint8))
  assert notes == ['16-bit: high byte for the ViT and BRISQUE']
  levels = (np.arange(400, dtype=np.uint16).reshape(20, 20) * 163).astype(np.uint16)
  Image.fromarray(levels).save(tmp_path / 'full16.png')
  got, _ = assess_io.read_for_metrics(str(tmp_path / 'full16.png'))
  np.testing.assert_array_equal(got[..., 0], skimage.util.img_as_ubyte(levels))
  np.testing.assert_array_equal(got[..., 0], images_lib.read_image(tmp_path / 'full16.png',
                                                                   mode='L')[..., 0])


def test_16_bit_pairs_score_at_16_bit_precision(tiny_checkpoint, tmp_path):
  """SSIM/MSE/PSNR of 16-bit grey files equal scikit-image's at data_range 65535 (on the
  0-255 scale for MSE), where the high byte alone would call the pair identical."""
  ckpt, _, _ = tiny_checkpoint
  orig, recon, out = tmp_path / 'o', tmp_path / 'r', tmp_path / 'out'
  orig.mkdir()
  recon.mkdir()
  rng = np.random.default_rng(1)
  a = (data.camera()[100:164, 100:164].astype(np.uint16) * 257)
  b = (a + rng.integers(0, 200, a.shape)).clip(0, 65535).astype(np.uint16)  # Low byte only.
  Image.fromarray(a).save(orig / 'x.png')
  Image.fromarray(b).save(recon / 'x.png')
  c8 = data.camera()[200:264, 200:264]  # An 8-bit reconstruction of a 16-bit original.
  Image.fromarray(c8.astype(np.uint16) * 257 + 100).save(orig / 'y.png')
  Image.fromarray(c8).save(recon / 'y.png')
  _run(orig, recon, ckpt, out)
  rows = {r['image']: r for r in csv.DictReader(open(out / 'report.csv'))}
  for name, x, y in (('x', a, b), ('y', c8.astype(np.uint16) * 257 + 100,
                                  c8.astype(np.uint16) * 257)):
    row = rows[name]
    want_ssim = skimage.metrics.structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=65535)
    want_psnr = skimage.metrics.peak_signal_noise_ratio(x, y, data_range=65535)
    want_mse = skimage.metrics.mean_squared_error(x, y) / 257.0 ** 2
    assert float(row['ssim']) == pytest.approx(want_ssim, abs=1e-5)  # float32 SSIM.
    assert float(row['psnr_db']) == pytest.approx(want_psnr, rel=1e-6)
    assert float(row['mse']) == pytest.approx(want_mse, rel=1e-6)
  assert np.isfinite(float(rows['x']['psnr_db']))  # The high bytes are equal.
  assert '16-bit' in rows['x']['notes']
