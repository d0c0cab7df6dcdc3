"""vision_core: mesh construction, batch placement, atomic writes, flat npz trees."""

import json
import os
import re
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from vision_core import folders, io, mesh, npz, run_config
from vision_core.errors import UserInputError


def test_mesh_shapes_and_errors():
  assert jax.device_count() == 8
  assert mesh.make_mesh((-1, 1)).shape == {'data': 8, 'model': 1}
  assert mesh.make_mesh((4, -1)).shape == {'data': 4, 'model': 2}
  with pytest.raises(UserInputError, match='needs 6 devices, but there are 8'):
    mesh.make_mesh((3, 2))
  with pytest.raises(UserInputError, match='cannot be split'):
    mesh.make_mesh((-1, 3))
  for shape in ((-2, 1), (-4, -2), 8, (8,), (0, 8), (2.0, 4)):
    with pytest.raises(UserInputError, match=r'^mesh shape .*: expected two sizes \(data, '
                       r'model\), each > 0 or -1'):
      mesh.make_mesh(shape)
  with pytest.raises(UserInputError, match=r"mesh axes \('batch',\): expected a 'data' axis"):
    mesh.shard_batch(np.zeros((8, 2)), jax.make_mesh((8,), ('batch',)))


def test_shard_batch_splits_rows_over_data_axis():
  m = mesh.make_mesh((4, 2))
  batch = {'x': np.arange(8 * 3, dtype=np.float32).reshape(8, 3), 'y': np.arange(8)}
  placed = mesh.shard_batch(batch, m)
  assert placed['x'].sharding.spec == jax.sharding.PartitionSpec('data', None)
  shard_rows = {tuple(s.index[0].indices(8)) for s in placed['x'].addressable_shards}
  assert shard_rows == {(0, 2, 1), (2, 4, 1), (4, 6, 1), (6, 8, 1)}
  np.testing.assert_array_equal(mesh.to_host(placed)['x'], batch['x'])
  with pytest.raises(UserInputError, match=r"^shard_batch: 6 rows \(\(6, 3\) per host\) "
                     r"cannot be split over the 4 devices of the mesh's data axis; pad"):
    mesh.shard_batch({'x': np.zeros((6, 3))}, m)
  with pytest.raises(UserInputError, match='a scalar has no batch axis'):
    mesh.shard_batch({'x': np.zeros((8, 3)), 'step': 3}, m)
  with pytest.raises(UserInputError, match='batch=6 is not divisible by the 4 devices'):
    mesh.check_batch_size(6, m)
  for size in (0, -4):  # divisible, and meaningless: named as the field, not the loader's
    with pytest.raises(UserInputError, match=rf'^batch_size={size}: expected > 0 \(a multiple '
                       r'of the 4 devices'):
      mesh.check_batch_size(size, m, field='batch_size')


def test_explicit_meshes_are_used_as_auto_ones():
  """`jax.make_mesh`'s meshes have Explicit axes by default; ours are Auto (see auto_axes)."""
  explicit = jax.make_mesh((4, 2), ('data', 'model'),
                           axis_types=(jax.sharding.AxisType.Explicit,) * 2)
  auto = mesh.auto_axes(explicit)
  assert auto.axis_types == (jax.sharding.AxisType.Auto,) * 2
  assert auto.axis_names == explicit.axis_names
  np.testing.assert_array_equal(auto.devices, explicit.devices)
  assert mesh.auto_axes(auto) is auto
  assert mesh.make_mesh((4, 2)).axis_types == auto.axis_types
  placed = mesh.shard_batch({'x': np.arange(16.0).reshape(8, 2)}, explicit)['x']
  assert placed.sharding.mesh == auto and placed.sharding.spec[0] == 'data'


def test_check_fields_names_the_first_field_out_of_its_range():
  config = ml_collections.ConfigDict(dict(steps=10, rate=0.5, g=dict(width=0)))
  run_config.check_fields(config, [('steps', '> 0'), ('rate', 'in [0, 1)')])  # in range
  with pytest.raises(UserInputError, match=r'^config\.g\.width=0: expected > 0 \(why\)\.$'):
    run_config.check_fields(config, [('steps', '> 0'), ('g.width', '> 0', 'why')],
                            prefix='config.')
  run_config.check_fields(config, [('absent', '> 0'), ('g.absent', '> 0')])  # optional ones
  config.rate = float('nan')
  with pytest.raises(UserInputError, match=r'^rate=nan: expected >= 0\.$'):
    run_config.check_fields(config, [('rate', '>= 0')])


def test_a_workdir_of_another_trainer_is_refused(tmp_path):
  """The shipped trainers' configs, each against the others' config.json; an older run of
  the same trainer (a field since added) is not refused."""
  from tests.vit_train_helpers import load_config_module  # pylint: disable=g-import-not-at-top
  configs = {name: load_config_module(name).get_config(arg) for name, arg in (
      ('vit', 'testing,/tmp/x'), ('igpt', 'testing,/tmp/x'), ('gan', 'dcgan,mnist'))}
  for name, saved in configs.items():
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / run_config.FILE).write_text(saved.to_json())
    for other, config in configs.items():
      if other == name:
        older = ml_collections.ConfigDict(json.loads(saved.to_json()))
        del older['seed']
        (workdir / 'older').mkdir(exist_ok=True)
        (workdir / 'older' / run_config.FILE).write_text(older.to_json())
        run_config.check_same_program(config, str(workdir))
        run_config.check_same_program(config, str(workdir / 'older'))
      else:
        with pytest.raises(UserInputError, match=rf'^{re.escape(str(workdir))} holds the run of '
                           rf'another program: its config\.json has fields this config does '
                           r'not \(\w+, .*\); use a new workdir\.$'):
          run_config.check_same_program(config, str(workdir))
  run_config.check_same_program(configs['vit'], str(tmp_path / 'absent'))


@pytest.mark.parametrize('text', ['{not json', '[1, 2]'])
def test_a_damaged_config_json_is_refused_not_replaced(tmp_path, text):
  # Before: read as absent, so the checks against the workdir's run were skipped unsaid and
  # the file replaced.
  (tmp_path / run_config.FILE).write_text(text)
  config = ml_collections.ConfigDict({'batch': 8})
  for check in (run_config.changed_fields, run_config.check_same_program):
    with pytest.raises(UserInputError, match=r'config\.json: not a config saved by a run .*'
                       'damaged. Restore it, or move it aside'):
      check(config, str(tmp_path))
  assert (tmp_path / run_config.FILE).read_text() == text


@pytest.mark.parametrize('env, message', [
    ({'JAX_NUM_PROCESSES': '2'}, 'set both JAX_NUM_PROCESSES and JAX_PROCESS_ID'),
    ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': 'one'}, "JAX_PROCESS_ID='one': expected a"),
    ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '2'}, 'expected less than JAX_NUM_PROCESSES'),
])
def test_multi_process_environment_errors_are_clear(monkeypatch, env, message):
  """Started processes are tested in test_multiprocess.py; these fail before connecting."""
  for name in ('JAX_NUM_PROCESSES', 'JAX_PROCESS_ID', 'TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS',
               'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', 'localhost:1')
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(UserInputError, match=message):
    mesh.initialize_distributed()
  assert not jax.distributed.is_initialized()


@pytest.mark.parametrize('env', [{'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '1'},
                                 {'JAX_PROCESS_ID': '0'}])
def test_process_count_without_a_coordinator_is_refused(monkeypatch, env):
  # Before: each process ran alone as process 0 of 1, all of them writing one workdir.
  for name in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
               'TPU_WORKER_HOSTNAMES', 'SLURM_NTASKS', 'OMPI_COMM_WORLD_SIZE'):
    monkeypatch.delenv(name, raising=False)
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(UserInputError, match='set but JAX_COORDINATOR_ADDRESS is not'):
    mesh.initialize_distributed()
  monkeypatch.setenv('JAX_NUM_PROCESSES', '1')  # one process of one: nothing to start
  monkeypatch.delenv('JAX_PROCESS_ID', raising=False)
  mesh.initialize_distributed()
  assert not jax.distributed.is_initialized()


def test_bare_coordinator_address_outside_a_cluster_is_a_clear_error():
  """JAX reads only the address from the environment; outside a TPU VM, SLURM or MPI it
  cannot tell the process count. (A fresh process: JAX must not have started yet.)"""
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(('JAX_', 'TPU_', 'SLURM_', 'OMPI_'))}
  env['JAX_COORDINATOR_ADDRESS'] = 'localhost:1'
  result = subprocess.run(
      [sys.executable, '-c', 'from vision_core import mesh; mesh.initialize_distributed()'],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
      capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert ('set JAX_NUM_PROCESSES and JAX_PROCESS_ID beside JAX_COORDINATOR_ADDRESS'
          in result.stderr), result.stderr[-2000:]


_DEVICES_SCRIPT = '''
import os, jax
from vision_core import mesh
if os.environ.get('RUN_JAX_FIRST'):
  jax.numpy.zeros(1).block_until_ready()
print(mesh.one_cpu_device_per_core(), len(jax.devices()), mesh.one_cpu_device_per_core())
'''


@pytest.mark.parametrize('extra_env,expected', [
    ({}, 'per-core'),
    ({'JAX_NUM_CPU_DEVICES': '3'}, 'None 3 None'),
    ({'XLA_FLAGS': '--xla_force_host_platform_device_count=5'}, 'None 5 None'),
    ({'RUN_JAX_FIRST': '1'}, 'None 1 None'),  # too late: JAX's devices are fixed
])
def test_one_cpu_device_per_core_unless_the_user_chose(extra_env, expected):
  """A fresh process gets one CPU device per core (at most 8); a count the user set is kept;
  once JAX runs, a second call changes nothing and does not raise."""
  env = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', 'JAX_NUM_CPU_DEVICES')}
  env.update(extra_env, JAX_PLATFORMS='cpu')
  result = subprocess.run(
      [sys.executable, '-c', _DEVICES_SCRIPT],
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), env=env,
      capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  if expected == 'per-core':
    cores = min(len(os.sched_getaffinity(0)), 8)
    expected = f'{cores} {cores} None' if cores > 1 else 'None 1 None'
  assert result.stdout.split('\n')[-2] == expected


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
  path = tmp_path / 'out.bin'
  with pytest.raises(RuntimeError):
    with io.atomic_write(path) as f:
      f.write(b'half')
      raise RuntimeError('interrupted')
  assert os.listdir(tmp_path) == []
  with io.atomic_write(path) as f:
    f.write(b'whole')
  assert path.read_bytes() == b'whole'
  with pytest.raises(UserInputError, match='already exists'):
    with io.atomic_write(path) as f:
      f.write(b'other')
  assert path.read_bytes() == b'whole' and os.listdir(tmp_path) == ['out.bin']


def test_atomic_write_gives_plain_open_permissions(tmp_path):
  old = os.umask(0o022)
  try:
    with io.atomic_write(tmp_path / 'a.bin') as f:
      f.write(b'x')
    with open(tmp_path / 'b.bin', 'wb') as f:
      f.write(b'x')
  finally:
    os.umask(old)
  assert os.stat(tmp_path / 'a.bin').st_mode & 0o777 == os.stat(tmp_path / 'b.bin').st_mode & 0o777


def test_a_folder_is_staged_and_published_whole(tmp_path, monkeypatch):
  out = tmp_path / 'out'
  old = os.umask(0o022)
  try:
    with folders.staging_folder(out) as staging:
      assert os.path.basename(staging).startswith('.out.partial-')
      (tmp_path / 'plain').mkdir()  # mkdtemp's 0700 was not what a user's mkdir gives
      assert os.stat(staging).st_mode & 0o777 == os.stat(tmp_path / 'plain').st_mode & 0o777
      with open(os.path.join(staging, 'a'), 'w') as f:
        f.write('new')
      out.mkdir()
      (out / 'a').write_text('old')
      folders.publish_folder(staging, out)
  finally:
    os.umask(old)
  assert (out / 'a').read_text() == 'new' and sorted(os.listdir(tmp_path)) == ['out', 'plain']
  # A Ctrl-C or SIGTERM (KeyboardInterrupt) the instant the folder is made: nothing left
  # (the study's CLI test once found its staging folder after a SIGTERM under load).
  real_mkdir = os.mkdir

  def mkdir_then_signal(path, *args):
    real_mkdir(path, *args)
    raise KeyboardInterrupt
  monkeypatch.setattr(folders.os, 'mkdir', mkdir_then_signal)
  with pytest.raises(KeyboardInterrupt):
    with folders.staging_folder(out):
      pass
  assert sorted(os.listdir(tmp_path)) == ['out', 'plain']
  # A failed rename puts the old folder back.
  monkeypatch.setattr(folders.os, 'mkdir', real_mkdir)
  with folders.staging_folder(out) as staging:
    def rename_fails_for_staging(source, target, real=os.rename):
      if source == staging:
        raise OSError('disk gone')
      real(source, target)
    monkeypatch.setattr(folders.os, 'rename', rename_fails_for_staging)
    with pytest.raises(OSError, match='disk gone'):
      folders.publish_folder(staging, str(out))
  assert (out / 'a').read_text() == 'new'


def test_atomic_write_to_a_read_only_folder_names_the_file(tmp_path, monkeypatch):
  def denied(**kwargs):  # what a read-only folder does (root, who runs CI, is never denied)
    raise PermissionError(13, 'Permission denied', os.path.join(kwargs['dir'], '.a.json.x.tmp'))
  monkeypatch.setattr(io.tempfile, 'mkstemp', denied)
  # Before: "[Errno 13] Permission denied: '.../.a.json.x.tmp'", a file the user never named.
  with pytest.raises(UserInputError, match=rf'^{re.escape(str(tmp_path))}/a\.json: cannot '
                     rf'write there \(permission denied for the folder {re.escape(str(tmp_path))}'
                     r'\)\.$'):
    with io.atomic_write(tmp_path / 'a.json', 'w') as f:
      f.write('{}')


def test_flatten_unflatten_inverse():
  tree = {'a': {'b': np.zeros(2), 'c': {'d': np.ones(1)}}, 'e': np.arange(3)}
  flat = npz.flatten(tree)
  assert set(flat) == {'a/b', 'a/c/d', 'e'}
  back = npz.unflatten(flat)
  np.testing.assert_array_equal(back['a']['c']['d'], tree['a']['c']['d'])


def test_makedirs_refuses_files_in_the_path(tmp_path):
  """A --workdir naming a file was a FileExistsError traceback from every trainer."""
  (tmp_path / 'file').write_text('keep')
  with pytest.raises(UserInputError, match=r'file exists and is not a folder; choose another'):
    io.makedirs(str(tmp_path / 'file'))
  with pytest.raises(UserInputError, match=r'file/run: cannot create it, .*file exists and is '
                     r'not a folder'):
    io.makedirs(str(tmp_path / 'file' / 'run'))
  io.makedirs(str(tmp_path / 'a' / 'b'))
  io.makedirs(str(tmp_path / 'a' / 'b'))  # an existing folder is fine
  assert (tmp_path / 'a' / 'b').is_dir() and (tmp_path / 'file').read_text() == 'keep'


def test_check_can_write_refuses_folders_and_files_in_the_path(tmp_path):
  (tmp_path / 'dir').mkdir()
  (tmp_path / 'file').write_text('keep')
  for overwrite in (False, True):
    with pytest.raises(UserInputError, match=r'dir is a folder'):
      io.check_can_write(str(tmp_path / 'dir'), overwrite=overwrite)
    with pytest.raises(UserInputError, match=r'file/sub/x.png: cannot create it, .*file '
                       r'exists and is not a folder'):
      io.check_can_write(str(tmp_path / 'file' / 'sub' / 'x.png'), overwrite=overwrite)
    with pytest.raises(UserInputError, match=r'is a folder'):
      with io.atomic_write(str(tmp_path / 'dir'), 'wb', overwrite=overwrite) as f:
        f.write(b'x')
  io.check_can_write(str(tmp_path / 'new' / 'deeper' / 'x.png'), overwrite=False)
  assert (tmp_path / 'file').read_text() == 'keep' and (tmp_path / 'dir').is_dir()
  assert sorted(os.listdir(tmp_path)) == ['dir', 'file']
