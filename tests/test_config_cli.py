"""vision_core.config_cli: the trainers' command lines fail in one line, naming the fix."""

import os
import subprocess
import sys

import ml_collections
import pytest

from vision_core import config_cli
from vision_core.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_config_spec_and_field_paths():
  assert config_cli.config_spec(['--config', 'a.py:x', '--workdir', 'w']) == 'a.py:x'
  assert config_cli.config_spec(['--config=b.py:y,z']) == 'b.py:y,z'
  assert config_cli.config_spec(['--workdir', 'w']) is None
  config = ml_collections.ConfigDict({'batch': 8, 'pp': {'crop': 32, 'resize': 36}})
  assert sorted(config_cli.field_paths(config)) == ['batch', 'pp.crop', 'pp.resize']
  config_cli.check_overrides(['--config.pp.crop=8', '--config.pp', '--config.batch=2'],
                             config)
  with pytest.raises(UserInputError, match=r'--config.pp.crap: no such config field. Did you '
                     r'mean pp.crop\? Valid fields: batch, pp.crop, pp.resize\.'):
    config_cli.check_overrides(['--config.pp.crap=8'], config)


def test_a_tuple_field_given_twice_is_refused():
  config = ml_collections.ConfigDict({'batch': 8, 'mesh': (-1, 1)})
  config_cli.check_overrides(['--config.batch=2', '--config.batch=4', '--config.mesh=(2,1)'],
                             config)  # a scalar given twice: the last wins, as absl does
  for argv in (['--config.mesh=(1,1)', '--config.mesh=(2,2)'],
               ['--config.mesh', '(1,1)', '--config.mesh=(2,2)']):
    # ml_collections would have made the mesh (1, 1, 2, 2).
    with pytest.raises(UserInputError, match=r'^--config.mesh is given twice; give a tuple '
                       'field once'):
      config_cli.check_overrides(argv, config)


@pytest.mark.parametrize('module, spec, message', [
    ('gan_jax.main', 'configs/gan.py:dcgan,mnist',
     '--config.lossx: no such config field. Did you mean loss? Valid fields: adam_b1'),
    ('igpt_jax.main', 'configs/igpt.py:tiny,cifar10',
     '--config.lossx: no such config field. Valid fields: attention, b2'),
    ('gan_jax.main', 'configs/gan.py:dcgan,folder,abc',
     "--config: configs/gan.py:dcgan,folder,abc: SIZE 'abc' is not a number of pixels"),
    ('igpt_jax.main', 'configs/nope.py:tiny,cifar10',
     '--config configs/nope.py:tiny,cifar10: no such config file configs/nope.py'),
])
def test_every_trainer_reports_a_bad_command_line_in_one_line(tmp_path, module, spec,
                                                                message):
  result = subprocess.run(
      [sys.executable, '-m', module, '--config', spec, '--workdir', str(tmp_path / 'w'),
       '--config.lossx=1'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.startswith(f'{module}: error: {message}'), result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'w').exists()


def test_a_parsed_command_line_with_a_tuple_given_twice_is_refused(tmp_path):
  # absl parses it: ml_collections joins the two, and the mesh was (1, 1, 2, 4).
  result = subprocess.run(
      [sys.executable, '-m', 'vit_jax.main', '--config', 'configs/vit.py:testing,cifar10',
       '--workdir', str(tmp_path / 'w'), '--config.mesh=(1,1)', '--config.mesh=(2,4)'],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.endswith('vit_jax.main: error: --config.mesh is given twice; give a '
                                'tuple field once (its values would be joined into one '
                                'tuple, not replaced).\n'), result.stderr[-2000:]
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('module, args, message', [
    ('vit_jax.main', ['--config', 'configs/vit.py:ViT-B_16,cifar10'],
     '--workdir: required, e.g. --config configs/vit.py:ViT-B_16,cifar10 --workdir'),
    ('igpt_jax.main', [], '--config and --workdir: required, e.g. --config configs/igpt.py'),
    ('gan_jax.main', ['--workdir', 'WORKDIR'],
     '--config: required, e.g. --config configs/gan.py:dcgan,mnist --workdir'),
])
def test_every_trainer_names_a_missing_config_or_workdir(tmp_path, module, args, message):
  args = [str(tmp_path / 'w') if a == 'WORKDIR' else a for a in args]
  result = subprocess.run([sys.executable, '-m', module, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.startswith(f'{module}: error: {message}'), result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('module,spec', [
    ('vit_jax.main', 'configs/vit_cifar10_scratch.py:../no/such/folder'),
    ('igpt_jax.main', 'configs/igpt.py:tiny,cifar10'),
    ('gan_jax.main', 'configs/gan.py:dcgan,mnist'),
])
def test_every_trainer_refuses_an_out_of_range_seed_before_it_starts(tmp_path, module, spec):
  """A seed past 2**32 would silently repeat a smaller one (PRNGKey reduces it); the trainers
  used to meet it only in the data loader, after seeding the model and the palette fit."""
  result = subprocess.run(
      [sys.executable, '-m', module, '--config', spec, '--workdir', str(tmp_path / 'w'),
       f'--config.seed={2**32 + 5}'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.startswith(
      f'{module}: error: --config.seed=4294967301: expected an integer in [0, 4294967295]'), (
          result.stderr[-2000:])
  assert not (tmp_path / 'w').exists()


def test_study_names_a_misspelt_field_of_its_default_config_in_one_line(tmp_path):
  """Without --config the study's flag holds a default, and ml_collections applied the
  overrides while defining it: a misspelt field ended in a traceback there."""
  result = subprocess.run([sys.executable, '-m', 'gan_jax.study', '--config.stepz=3',
                           '--out', str(tmp_path / 'o')], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.startswith(
      'gan_jax.study: error: --config.stepz: no such config field. Did you mean steps?'), (
          result.stderr[-2000:])
  assert len(result.stderr.strip().splitlines()) == 1
  assert not (tmp_path / 'o').exists()


@pytest.mark.parametrize('spec, fields', [
    ('vit.py:ViT-B_16,cifar10', ('batch', 'batch_eval')),
    ('vit_cifar10_scratch.py', ('batch', 'batch_eval')),
    ('igpt.py:tiny,cifar10', ('batch_size',)),
    ('gan.py:dcgan,mnist', ('batch_size',)),
])
def test_shipped_configs_shard_over_eight_devices(spec, fields):
  """Every shipped trainer config runs unchanged on 1, 2, 4 or 8 devices (a GPU box, a TPU
  v3-8): each batch the trainer splits over the 'data' axis divides by 8. (The CIFAR-10
  scratch config's batch_eval=500 was refused on 8 devices.)"""
  config = config_cli.config_without_overrides(['--config', os.path.join(ROOT, 'configs', spec)])
  for field in fields:
    assert config[field] % 8 == 0, f'configs/{spec}: {field}={config[field]}'
