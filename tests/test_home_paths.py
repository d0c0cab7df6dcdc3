"""A leading `~` in a user's path is the home folder, wherever the shell left it unexpanded.

`--workdir=~/runs`, `--config.dataset=~/data` or a path in a config file reach the code with
a literal `~` (a shell expands it only at the start of a word); without expansion a run made
a folder named `~` in the current folder. HOME points at a temporary folder in every test.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys

import ml_collections
import numpy as np
import pytest
from PIL import Image

from vision_core import config_cli, io
from vision_core.errors import UserInputError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NO_USER = '~no_such_user_zq9'


@pytest.fixture
def home(tmp_path, monkeypatch):
  """HOME is tmp_path/home; the current folder is tmp_path/cwd, checked for a `~` after."""
  home_dir, cwd = tmp_path / 'home', tmp_path / 'cwd'
  home_dir.mkdir()
  cwd.mkdir()
  monkeypatch.setenv('HOME', str(home_dir))
  monkeypatch.chdir(cwd)
  yield home_dir
  assert not any(p.name.startswith('~') for p in cwd.rglob('*')), list(cwd.rglob('*'))


def test_expand_user(home):
  assert io.expand_user(None) is None
  assert io.expand_user('') == ''
  for uri in ('gs://bucket/~/x', 's3://b/x', 'http://host/~user/x', 'https://h/x',
              'file:///tmp/x', 'hf://org/model'):
    assert io.expand_user(uri) == uri
  assert io.expand_user('~') == str(home)
  assert io.expand_user('~/a') == str(home / 'a')
  assert io.expand_user('~/a/~b') == str(home / 'a' / '~b')
  assert io.expand_user(pathlib.Path('~/a')) == str(home / 'a')
  for untouched in ('a/~b', 'a~', '/abs/~/x', 'cifar10', './~x'):
    assert io.expand_user(untouched) == untouched
  with pytest.raises(UserInputError, match=rf'--workdir={NO_USER}/r: cannot expand {NO_USER}: '
                     r'no such user'):
    io.expand_user(f'{NO_USER}/r', name='--workdir')


def test_expand_user_of_a_named_user():
  pwd = pytest.importorskip('pwd')
  entry = pwd.getpwuid(os.getuid())
  assert io.expand_user(f'~{entry.pw_name}/x') == os.path.join(entry.pw_dir.rstrip('/'), 'x')


def test_path_arg_failure_names_the_flag(home, capsys):
  parser = argparse.ArgumentParser(prog='p')
  parser.add_argument('--out', type=io.path_arg)
  assert parser.parse_args(['--out=~/o']).out == str(home / 'o')
  with pytest.raises(SystemExit) as e:
    parser.parse_args([f'--out={NO_USER}/o'])
  assert e.value.code == 2
  assert f'argument --out: {NO_USER}/o: cannot expand {NO_USER}' in capsys.readouterr().err


def test_every_string_field_with_a_leading_tilde_is_expanded(home):
  config = ml_collections.ConfigDict({
      'dataset': '~/data', 'tfds_data_dir': ml_collections.config_dict.placeholder(str),
      'pretrained': ml_collections.config_dict.placeholder(str), 'name': 'ViT-B_16',
      'bucket': 'gs://b/~/x', 'pp': {'crop': 32, 'palette': '~/p.npy', 'ops': 'a~b'},
      'images': 'skimage:astronaut, ~/a.png,~/faces', 'other_list': '~/a,~/b'}).lock()
  config.pretrained = '~/m.npz'
  config_cli.expand_user_fields(config, comma_lists=('images',))
  assert config.dataset == str(home / 'data')
  assert config.tfds_data_dir is None
  assert config.pretrained == str(home / 'm.npz')
  assert config.pp.palette == str(home / 'p.npy')
  assert (config.name, config.bucket, config.pp.ops) == ('ViT-B_16', 'gs://b/~/x', 'a~b')
  assert config.images == f'skimage:astronaut,{home}/a.png,{home}/faces'
  assert config.other_list == f'{home}/a,~/b'  # Not a list field: only the leading `~`.
  config.tfds_data_dir = f'{NO_USER}/tfds'
  with pytest.raises(UserInputError, match=f'config.tfds_data_dir={NO_USER}/tfds: cannot'):
    config_cli.expand_user_fields(config)


def test_expand_config_spec(home):
  assert config_cli.expand_config_spec(['p', '--config=~/c.py:a,~/d', '--workdir=~/w']) == [
      'p', f'--config={home}/c.py:a,~/d', '--workdir=~/w']  # --workdir: after parsing.
  assert config_cli.expand_config_spec(['p', '--config', '~/c.py']) == [
      'p', '--config', f'{home}/c.py']
  assert config_cli.expand_config_spec(['p', '--config=configs/vit.py:x']) == [
      'p', '--config=configs/vit.py:x']


_CONFIG_FILE = '''
import ml_collections
def get_config(arg):
  c = ml_collections.ConfigDict()
  c.dataset = arg
  c.pretrained = ml_collections.config_dict.placeholder(str)
  c.tfds_data_dir = '~/tfds'
  c.model_name = 'testing'
  return c
'''

_PRINT_FLAGS = ('import json, sys\n'
                'from vision_core import config_cli\n'
                'from vit_jax import main\n'
                'config_cli.parse_flags(sys.argv, example="x")\n'
                'print(json.dumps([main._WORKDIR.value, main._CONFIG.value.to_dict()]))\n')


def _run(args, home_dir, cwd):
  env = dict(os.environ, HOME=str(home_dir), PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                        text=True, timeout=300)


def test_trainer_command_line_expands_workdir_config_file_and_fields(home):
  (home / 'my_config.py').write_text(_CONFIG_FILE)
  result = _run(['-c', _PRINT_FLAGS, '--config=~/my_config.py:~/data', '--workdir=~/runs',
                 '--config.pretrained=~/ViT.npz'], home, os.getcwd())
  assert result.returncode == 0, result.stderr[-2000:]
  workdir, config = json.loads(result.stdout.strip().splitlines()[-1])
  assert workdir == str(home / 'runs')
  assert config == {'dataset': str(home / 'data'), 'pretrained': str(home / 'ViT.npz'),
                    'tfds_data_dir': str(home / 'tfds'), 'model_name': 'testing'}


@pytest.mark.parametrize('args', [
    ['-m', 'vit_jax.main', '--config', 'configs/vit.py:ViT-B_16,cifar10',
     f'--workdir={NO_USER}/runs'],
    ['-m', 'gan_jax.study', f'--out={NO_USER}/runs'],
])
def test_a_tilde_of_no_user_is_one_line_and_makes_no_folder(home, args):
  result = _run(args, home, ROOT)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.startswith(f'{args[1]}: error: --{args[-1][2:]}: cannot expand '
                                  f'{NO_USER}: no such user'), result.stderr[-2000:]
  assert len(result.stderr.strip().splitlines()) == 1
  assert not os.path.exists(os.path.join(ROOT, NO_USER))


def test_decompress_reads_and_writes_under_home(home):
  from gan_jax import decompress, fileformat, generators  # pylint: disable=g-import-not-at-top
  spec = {'family': 'dcgan', 'latent_dim': 8, 'image_size': 28, 'channels': 1, 'width': 4}
  generator = generators.make(spec, generators.init_params(spec, seed=0))
  generators.save(home / 'g.npz', generator)
  (home / 'in').mkdir()
  z = np.random.default_rng(0).standard_normal(8).astype(np.float32)
  (home / 'in' / 'x.ganz').write_bytes(fileformat.encode(
      z, generator_id=generator.identity, quantization='8bit', image_size=(28, 28)))
  decompress.main(['~/in/x.ganz', '-o', '~/out', '--generator=~/g.npz'])
  assert np.asarray(Image.open(home / 'out' / 'x.png')).shape == (28, 28)


def test_assess_reads_and_writes_under_home(home):
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax import assess, checkpoint, models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.configs.models import get_model_config  # pylint: disable=g-import-not-at-top
  model = models_vit.VisionTransformer(num_classes=10, **get_model_config('testing'))
  params = model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))['params']
  checkpoint.save(home / 'vit.npz', jax.tree.map(np.asarray, dict(params)))
  image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), np.uint8)
  for folder in ('orig', 'recon'):
    (home / folder).mkdir()
    Image.fromarray(image).save(home / folder / 'a.png')
  assess.main(['--originals=~/orig', '--reconstructions=~/recon', '--checkpoint=~/vit.npz',
               '--out=~/report', '--k=5'])
  assert {p.name for p in (home / 'report').iterdir()} >= {'report.md', 'report.csv'}


def test_predict_checks_its_csv_under_home(home, capsys):
  from vit_jax import predict  # pylint: disable=g-import-not-at-top
  (home / 'out').mkdir()
  (home / 'out' / 'p.csv').write_text('old')
  with pytest.raises(SystemExit) as e:  # --csv is checked before the checkpoint is read.
    predict.main(['~/a.png', '--checkpoint=~/missing.npz', '--csv=~/out/p.csv'])
  assert e.value.code == 2
  assert f'{home}/out/p.csv already exists' in capsys.readouterr().err
