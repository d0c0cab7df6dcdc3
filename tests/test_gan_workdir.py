"""What `gan_jax.main` leaves in (and takes from) its workdir around the run itself: a
finished run started again, and a run refused before training starts."""

import json
import os

import numpy as np
import pytest

from gan_jax import main
from tests import gan_train_helpers as helpers
from tests import workdir_files
from vision_core import data, metrics_log
from vision_core.errors import UserInputError
import vit_jax


@pytest.fixture
def tiny_config(tmp_path):
  config = helpers.tiny_config(tmp_path)
  config.fid_vit_checkpoint = ''  # no ViT to load; pixel_fd still needs the real images
  return config


def test_a_finished_run_started_again_does_nothing_and_returns_its_result(
    tiny_config, tmp_path, capsys, monkeypatch):
  workdir = tmp_path / 'run'
  first = main.run(tiny_config, str(workdir))
  capsys.readouterr()
  before = workdir_files.snapshot(workdir)
  with monkeypatch.context() as patch:  # No duplicate work: not even the dataset is read.
    patch.setattr(data, 'get_source', lambda *a, **k: pytest.fail('dataset read again'))
    patch.setattr(main, '_real_images', lambda *a, **k: pytest.fail('real images read again'))
    again = main.run(tiny_config, str(workdir))
    out = capsys.readouterr().out
  assert again == first
  assert f'{workdir}: the run is already complete at step 4; its result is ' \
         f'{workdir / "final.json"}' in out
  assert json.dumps(first, indent=2) in out
  # generator.npz, final.json, config.json: untouched
  assert workdir_files.snapshot(workdir) == before
  # A higher total_steps continues the run, with FID at its new end.
  tiny_config.total_steps = 6
  longer = main.run(tiny_config, str(workdir))
  rows = metrics_log.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['step'] for r in rows if r['split'] == 'train'] == [2, 4, 6]
  assert [r['step'] for r in rows if r['split'] == 'eval'] == [2, 4, 6]
  assert longer['step'] == 6 and 'pixel_fd' in longer
  assert json.loads((workdir / 'final.json').read_text()) == longer
  # A final.json older than the latest checkpoint (a run stopped before writing it) is not a
  # finished run's: the run ends again and writes it for its step.
  (workdir / 'final.json').write_text(json.dumps({'step': 4}))
  assert main.run(tiny_config, str(workdir))['step'] == 6
  assert json.loads((workdir / 'final.json').read_text())['step'] == 6


def test_a_run_stopped_before_final_json_computes_its_final_fid(tiny_config, tmp_path):
  """Stopped after its last checkpoint, before final.json (or with an older one): the run
  again trains no step, and wrote a final.json without its FID and training metrics (or
  with the older file's). It now computes the FID of its last step, as vit evaluates, and
  takes that step's training metrics from metrics.jsonl; each row is there once."""
  workdir = tmp_path / 'run'
  first = main.run(tiny_config, str(workdir))
  assert 'pixel_fd' in first and 'g_loss' in first
  (workdir / 'final.json').unlink()
  assert main.run(tiny_config, str(workdir)) == first
  assert json.loads((workdir / 'final.json').read_text()) == first
  (workdir / 'final.json').write_text(json.dumps({'step': 2, 'pixel_fd': 99.0}))
  assert main.run(tiny_config, str(workdir)) == first
  rows = metrics_log.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['step'] for r in rows if r['split'] == 'train'] == [2, 4]
  assert [r['step'] for r in rows if r['split'] == 'eval'] == [2, 4]


def _unreadable_images(root, config, fid_every):
  """`config` on an image folder whose class 'b' holds only files that are not images: the
  first one listed (class 'a', which gives the image shape) is fine, the FID's real images
  and the first batch are not."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  for cls in 'ab':
    os.makedirs(root / 'train' / cls)
    for i in range(8):
      path = root / 'train' / cls / f'{i}.png'
      if cls == 'a':
        Image.fromarray(np.zeros((28, 28, 3), np.uint8)).save(path)
      else:
        path.write_text('not an image')
  config.dataset, config.split, config.generator.channels = str(root), 'train', 3
  config.fid_every = fid_every
  return config


REFUSED = {
    'dataset path': dict(dataset='/nonexistent/mnist'),
    'batch size': dict(batch_size=7),  # 2 devices
    'loss': dict(loss='hinge'),
    'pp op': dict(preprocess='value_range(-1,1)|bogus(3)'),
    'pp shape': dict(preprocess='resize(32)|value_range(-1,1)'),
}


@pytest.mark.parametrize('name', sorted(REFUSED) + ['real images', 'first batch'])
def test_a_refused_run_creates_nothing_in_a_fresh_workdir(tiny_config, tmp_path, name):
  if name in REFUSED:
    for field, value in REFUSED[name].items():
      setattr(tiny_config, field, value)
  else:
    _unreadable_images(tmp_path / 'bad', tiny_config, fid_every=2 if name == 'real images'
                       else 0)
  with pytest.raises(UserInputError):
    main.run(tiny_config, str(tmp_path / 'runs' / 'w'))
  assert not os.path.exists(tmp_path / 'runs')


# Each used to train nonsense without a word (total_steps <= 0 wrote a step-0 workdir,
# negative rates, penalties or Adam betas gave NaN or ascending losses, negative periods
# were taken for 0, num_devices=-1 used all devices but one) or to fail naming another
# field (batch_size=0: the loader's `batch`).
BAD_FIELDS = [
    ('total_steps', 0), ('total_steps', -1), ('batch_size', 0), ('batch_size', -8),
    ('lr_g', -1e-4), ('lr_d', -1e-4), ('adam_b1', 1.5), ('adam_b2', -0.5),
    ('r1_gamma', -1.0), ('gp_lambda', -1.0), ('discriminator.width', 0),
    ('num_devices', -1), ('num_devices', 100), ('log_every', -1), ('sample_every', -1),
    ('checkpoint_every', -1), ('fid_every', -1), ('fid_batch_size', 0),
    ('lr_g', float('nan'))]


@pytest.mark.parametrize('field,value', BAD_FIELDS)
def test_a_field_out_of_range_is_refused_by_name_before_the_workdir_is_made(
    tiny_config, tmp_path, field, value):
  if field == 'fid_batch_size':  # used by the FID's ViT only
    tiny_config.fid_vit_checkpoint = vit_jax.SHIPPED_CIFAR10_VIT
  parent, _, name = field.rpartition('.')
  setattr(tiny_config[parent] if parent else tiny_config, name, value)
  with pytest.raises(UserInputError) as info:
    main.run(tiny_config, str(tmp_path / 'runs' / 'w'))
  message = str(info.value)
  assert message.startswith(f'config.{field}={value}') and '\n' not in message, message
  assert not os.path.exists(tmp_path / 'runs')


def test_a_refused_run_leaves_an_existing_workdir_as_it_was(tiny_config, tmp_path):
  workdir = tmp_path / 'w'
  os.makedirs(workdir / 'checkpoints')  # empty: e.g. left by an earlier version
  (workdir / 'notes.txt').write_text('mine')
  before = workdir_files.snapshot(workdir)
  with pytest.raises(UserInputError, match='not a readable image'):
    main.run(_unreadable_images(tmp_path / 'bad', tiny_config, fid_every=0), str(workdir))
  assert workdir_files.snapshot(workdir) == before
  assert sorted(os.listdir(workdir)) == ['checkpoints', 'notes.txt']


def test_skip_bad_images_trains_on_the_readable_ones(tiny_config, tmp_path):
  """The error above says to set skip_bad_images; the GAN's config has the field too."""
  config = _unreadable_images(tmp_path / 'bad', tiny_config, fid_every=0)
  config.skip_bad_images, config.total_steps = True, 2
  assert main.run(config, str(tmp_path / 'w'))['step'] == 2  # on class 'a''s 8 images


def test_fewer_real_images_than_fid_samples_is_said(tiny_config, tmp_path, capsys):
  """FID against fewer real images than samples is biased; the run used to say nothing."""
  source = data.get_source(tiny_config.dataset, split=tiny_config.split)
  tiny_config.fid_samples = 100
  real = main._real_images(source, tiny_config)  # pylint: disable=protected-access
  assert real.shape[0] == len(source) == 40
  err = capsys.readouterr().err
  assert 'config.fid_samples=100, but' in err
  assert 'has 40 images: FID compares 100 samples with all 40' in err
  tiny_config.fid_samples = 16
  assert main._real_images(source, tiny_config).shape[0] == 16  # pylint: disable=protected-access
  assert capsys.readouterr().err == ''


def test_a_diverged_run_stops_naming_the_step_and_saves_no_nan_checkpoint(tiny_config, tmp_path):
  # Learning rates of 1e30 overflow the weights at once: the losses go inf/NaN at step 1.
  tiny_config.lr_g = tiny_config.lr_d = 1e30
  tiny_config.log_every, tiny_config.checkpoint_every = 1, 2
  workdir = tmp_path / 'run'
  with pytest.raises(FloatingPointError, match=r'^step 1: non-finite training metrics .* lower '
                     r'lr_g / lr_d'):
    main.run(tiny_config, str(workdir))
  assert not os.path.exists(workdir / 'checkpoints')  # the stop came before any save
  assert not os.path.exists(workdir / 'metrics.jsonl')  # nor a NaN row
