"""The study end to end on tiny random weights: computed numbers, Ctrl-C, no overwrite."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from tests import gan_search_helpers
from tests import study_helpers as h
from tests.subprocess_env import xla_flags
from vision_core.errors import UserInputError


@pytest.fixture(scope='module', autouse=True)
def short_search_chunks():
  """The studies run in this process search in compiled chunks of 2 steps, not 10: the
  chunk's compilation was most of each new study's time (tests/gan_search_helpers.py). The
  command-line tests below run the default chunk."""
  with pytest.MonkeyPatch.context() as patch:
    gan_search_helpers.shorten_chunks(patch)
    yield


@pytest.fixture(scope='module')
def weights(tmp_path_factory):
  root = tmp_path_factory.mktemp('weights')
  return {'generator': h.write_generator(root / 'g0.npz', seed=0),
          'generator_b': h.write_generator(root / 'g1.npz', seed=1),
          'vit': h.write_vit(root / 'vit0', seed=0),
          'vit_b': h.write_vit(root / 'vit1', seed=1)}


def _run(config, **kwargs):
  from gan_jax import study  # pylint: disable=g-import-not-at-top
  return study.run(config, progress=False, **kwargs)


def _csv(folder):
  with open(os.path.join(folder, 'report.csv'), encoding='utf-8') as f:
    return list(csv.DictReader(f))


def _png(path):
  return np.asarray(Image.open(path).convert('RGB'))


@pytest.fixture(scope='module')
def study_run(weights, tmp_path_factory):
  tmp = tmp_path_factory.mktemp('study')
  config = h.tiny_config(tmp, generator=weights['generator'], vit=weights['vit'])
  paths = _run(config)
  return config, paths


GAN, JPEG = 'GAN latents (8bit .ganz)', 'JPEG at the same size'
NAMES = ['astronaut', 'logo', 'coffee']


def test_study_writes_report_figure_and_files(study_run):
  config, paths = study_run
  out = config.out
  for key in ('markdown', 'csv', 'figure'):
    assert os.path.isfile(paths[key])
  assert Image.open(paths['figure']).size[0] > 100
  for name in NAMES:
    for sub, ext in (('compressed', '.ganz'), ('reconstructions', '.png'), ('originals', '.png'),
                     ('jpeg', '.jpg')):
      assert os.path.isfile(os.path.join(out, sub, name + ext))
  rows = _csv(out)
  assert [r['image'] for r in rows] == [f'{n} ({m})' for n in NAMES for m in ('GAN', 'JPEG')]
  report = open(paths['markdown'], encoding='utf-8').read()
  for text in ('## Summary', f'## {GAN}', f'## {JPEG}', 'ViT-Score', 'FID raw pixels',
               'BRISQUE: absent', 'logo: RGBA composited on grey level 255',
               "Colour: the study's inputs were made 8-bit RGB"):
    assert text in report
  assert '--alpha-background' not in report  # assess's flag, not the study's setting
  assert not [f for f in os.listdir(os.path.dirname(out)) if '.partial-' in f]


def test_study_numbers_are_recomputable(study_run):
  """Every per-image number equals an independent computation on the written files."""
  from gan_jax import decompress, generators  # pylint: disable=g-import-not-at-top
  from gan_jax import study_scores  # pylint: disable=g-import-not-at-top
  from vit_jax import metrics  # pylint: disable=g-import-not-at-top
  config, _ = study_run
  out = config.out
  generator = generators.load(config.generator)
  classifier = study_scores.load_classifier(config.vit_checkpoint)
  for row in _csv(out):
    name, method = row['image'].split(' (')
    original = _png(os.path.join(out, 'originals', name + '.png'))
    if method == 'GAN)':
      file = os.path.join(out, 'compressed', name + '.ganz')
      with open(file, 'rb') as f:
        recon = decompress.decompress(f.read(), generator, source=file)
      np.testing.assert_array_equal(recon, _png(os.path.join(out, 'reconstructions',
                                                             name + '.png')))
    else:
      file = os.path.join(out, 'jpeg', name + '.jpg')
      recon = _png(file)
    size = os.path.getsize(file)
    assert float(row['bits_per_pixel']) == pytest.approx(8 * size / (28 * 28))
    assert float(row['compression_ratio']) == pytest.approx(28 * 28 * 3 / size)
    assert float(row['ssim']) == pytest.approx(structural_similarity(
        original, recon, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=255, channel_axis=-1), abs=1e-5)
    assert float(row['psnr_db']) == pytest.approx(
        peak_signal_noise_ratio(original, recon, data_range=255), rel=1e-5)
    assert float(row['mse']) == pytest.approx(
        np.mean((original.astype(float) - recon) ** 2), rel=1e-5)
    assert float(row['vit_score']) == pytest.approx(metrics.vit_score(
        original[None], recon[None], classifier.model, classifier.params,
        k=config.vit_score_k, image_size=classifier.resolution)[0])
  summary = json.load(open(os.path.join(out, 'study.json'), encoding='utf-8'))
  originals = np.stack([_png(os.path.join(out, 'originals', n + '.png')).reshape(-1)
                        for n in summary['images']]).astype(np.float64)
  recons = np.stack([_png(os.path.join(out, 'reconstructions', n + '.png')).reshape(-1)
                     for n in summary['images']]).astype(np.float64)
  # Independent Frechet distance for n < d: tr sqrt(S1 S2) from the n x n Gram matrix.
  ca, cb = originals - originals.mean(0), recons - recons.mean(0)
  n = len(originals)
  gram = (ca @ cb.T) / (n - 1)
  nuclear = np.sum(np.sqrt(np.clip(np.linalg.eigvals(gram @ gram.T).real, 0, None)))
  expected = (np.sum((originals.mean(0) - recons.mean(0)) ** 2) + np.sum(ca ** 2) / (n - 1)
              + np.sum(cb ** 2) / (n - 1) - 2 * nuclear)
  assert summary['fid'][GAN]['raw_pixels'] == pytest.approx(expected, rel=1e-6)


def test_changing_generator_or_vit_changes_numbers(study_run, weights, tmp_path):
  config, _ = study_run
  base = _csv(config.out)
  other_g = h.tiny_config(tmp_path / 'g', generator=weights['generator_b'], vit=weights['vit'])
  rows_g = _csv(os.path.dirname(_run(other_g)['csv']))
  assert [r['psnr_db'] for r in rows_g][::2] != [r['psnr_db'] for r in base][::2]
  other_v = h.tiny_config(tmp_path / 'v', generator=weights['generator'], vit=weights['vit_b'])
  rows_v = _csv(os.path.dirname(_run(other_v)['csv']))
  assert [r['psnr_db'] for r in rows_v] == [r['psnr_db'] for r in base]  # same G and search
  assert [r['vit_prelogit_cosine'] for r in rows_v] != [r['vit_prelogit_cosine'] for r in base]


@pytest.mark.parametrize('stage', ['compress', 'score', 'report', 'publish'])
def test_interrupt_leaves_no_outputs(weights, tmp_path, stage):
  config = h.tiny_config(tmp_path, generator=weights['generator'], vit=weights['vit'])

  def interrupt(name):
    if name == stage:
      raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    _run(config, on_stage=interrupt)
  assert not os.path.exists(config.out)
  assert not [f for f in os.listdir(tmp_path) if f.startswith('.study')]


def test_refuses_to_overwrite_and_force_replaces(study_run, weights, tmp_path):
  config = h.tiny_config(tmp_path, generator=weights['generator'], vit=weights['vit'])
  os.makedirs(config.out)
  with open(os.path.join(config.out, 'mine.txt'), 'w') as f:
    f.write('user data')
  with pytest.raises(UserInputError, match='not a study output folder'):
    _run(config, force=True)
  assert open(os.path.join(config.out, 'mine.txt')).read() == 'user data'

  config.out = study_run[0].out
  before = {f: os.path.getmtime(os.path.join(config.out, f)) for f in os.listdir(config.out)}
  with pytest.raises(UserInputError, match='--force'):
    _run(config)
  assert before == {f: os.path.getmtime(os.path.join(config.out, f))
                    for f in os.listdir(config.out)}

  # Forced, but interrupted before publishing: the old study stays whole.
  def interrupt(name):
    if name == 'publish':
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    _run(config, force=True, on_stage=interrupt)
  assert before == {f: os.path.getmtime(os.path.join(config.out, f))
                    for f in os.listdir(config.out)}


def test_bad_config_messages(weights, tmp_path):
  config = h.tiny_config(tmp_path, generator=weights['generator'], vit=weights['vit'])
  config.vit_score_k = 7
  with pytest.raises(UserInputError, match='vit_score_k=7'):
    _run(config)
  config.vit_score_k = 2
  config.images = 'skimage:no_such_image'
  with pytest.raises(UserInputError, match='no_such_image'):
    _run(config)
  preset = h.load_study_config('pgan_celebahq512')
  preset.out = str(tmp_path / 'pgan')
  with pytest.raises(UserInputError, match='--config.generator=.*docs/study.md'):
    _run(preset)
  assert not os.path.exists(tmp_path / 'study')


def _cli(weights, out):
  cmd = [sys.executable, '-m', 'gan_jax.study', '--config', f'{h.ROOT}/configs/study.py:default',
         f'--config.generator={weights["generator"]}', f'--config.vit_checkpoint={weights["vit"]}',
         '--config.images=skimage:astronaut,skimage:chelsea', '--config.steps=30',
         '--config.restarts=2', '--config.vit_score_k=2', '--config.brisque_model=',
         '--config.brisque_range=', '--out', str(out)]
  return cmd, dict(os.environ, PYTHONPATH=str(h.ROOT), XLA_FLAGS=xla_flags(1))


@pytest.mark.parametrize('sig,ignored_by_parent', [
    (signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)])
def test_cli_interrupt_leaves_nothing(weights, tmp_path, sig, ignored_by_parent):
  """Ctrl-C (SIGINT) or kill (SIGTERM) during the work: no output folder, no staging left.
  Also when the parent passed SIGINT down ignored (a shell's background job, some test
  runners' workers): Python then installs no Ctrl-C handler of its own."""
  out = tmp_path / 'cli'
  cmd, env = _cli(weights, out)
  if ignored_by_parent:  # `exec` keeps the ignored disposition (no preexec_fn: threads)
    cmd = ['sh', '-c', 'trap "" INT; exec "$@"', 'sh', *cmd]
  proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 120
  while time.time() < deadline and proc.poll() is None:
    if [f for f in os.listdir(tmp_path) if '.partial-' in f]:
      break
    time.sleep(0.05)
  assert proc.poll() is None, proc.communicate()[0]
  proc.send_signal(sig)
  proc.communicate(timeout=120)
  assert proc.returncode != 0
  assert not out.exists()
  assert not [f for f in os.listdir(tmp_path) if f.startswith('.cli')]


def test_cli_runs_prints_paths_then_refuses(weights, tmp_path):
  out = tmp_path / 'cli'
  cmd, env = _cli(weights, out)
  done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stdout + done.stderr
  assert f'figure:  {out}/figure.png' in done.stdout
  again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
  assert again.returncode != 0 and '--force' in again.stderr
  assert 'Traceback' not in again.stderr


def test_pgan_preset_same_code_path(tmp_path):
  """configs/study.py:pgan_celebahq512 with a tiny PGAN and a zoo-named ViT (no model.json)."""
  config = h.load_study_config('pgan_celebahq512')
  config.generator = h.write_pgan(tmp_path / 'pgan.npz')
  config.vit_checkpoint = h.write_zoo_vit(tmp_path / 'ViT-testing.npz')
  config.vit_model = 'testing'
  config.vit_resolution = 32
  config.vit_score_k = 2
  config.images = 'skimage:astronaut,skimage:rocket'
  config.steps, config.restarts, config.stop_patience = 10, 1, 0
  config.brisque_model = config.brisque_range = ''
  paths = _run(config, out=str(tmp_path / 'pgan_study'))
  rows = _csv(os.path.dirname(paths['csv']))
  assert [r['image'] for r in rows] == ['astronaut (GAN)', 'astronaut (JPEG)',
                                        'rocket (GAN)', 'rocket (JPEG)']
  report = open(paths['markdown'], encoding='utf-8').read()
  assert 'pgan, latent 8' in report and '(testing, 6 classes, 32 px)' in report


def test_brisque_columns_with_the_opencv_model(shared_data, weights, tmp_path):
  brisque = shared_data / 'brisque'
  config = h.tiny_config(tmp_path, generator=weights['generator'], vit=weights['vit'],
                         brisque_model=str(brisque / 'brisque_model_live.yml'),
                         brisque_range=str(brisque / 'brisque_range_live.yml'))
  paths = _run(config)
  rows = _csv(config.out)
  from vit_jax import metrics  # pylint: disable=g-import-not-at-top
  original = _png(os.path.join(config.out, 'originals', 'astronaut.png'))
  expected = metrics.brisque(original[None], config.brisque_model, config.brisque_range)[0]
  # The study scores a batch of 4 images, this call a batch of 1: float32 reductions compile
  # differently per batch shape (~1e-5 relative), so compare at the OpenCV-agreement bound.
  assert float(rows[0]['brisque_original']) == pytest.approx(expected, abs=1e-3)
  assert 'BRISQUE: absent' not in open(paths['markdown'], encoding='utf-8').read()


def test_out_below_a_file_is_a_clear_error(tmp_path):
  from gan_jax import study
  (tmp_path / 'afile').write_text('keep')
  for force in (False, True):
    with pytest.raises(UserInputError, match=r'afile/sub: cannot create it, .*afile exists and '
                       r'is not a folder'):
      study.check_output(str(tmp_path / 'afile' / 'sub'), force=force)
  study.check_output(str(tmp_path / 'new' / 'sub'), force=False)  # Creatable: fine.
  assert (tmp_path / 'afile').read_text() == 'keep'
