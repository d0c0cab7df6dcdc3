"""Workdirs and output files on bucket URIs (gs://...), offline.

fsspec's in-memory filesystem is registered for the `gs`/`gcs` protocols inside each test, so
etils.epath's fsspec backend (the one used without TensorFlow) writes real `gs://` paths into
a dict; the registration is undone afterwards. Local results are the reference: the same
writes to a local folder must give byte-identical files.
"""

import importlib
import importlib.util
import json
import os

import fsspec
import numpy as np
import pytest
from fsspec.implementations import memory

from tests.test_gan_train import tiny_config  # pylint: disable=unused-import  (a fixture)
from vision_core import checkpointing, io, metrics_log, npz, tfevents
from vision_core.errors import UserInputError

RUN = 'gs://bucket/run'


@pytest.fixture
def fake_gcs():
  """A fresh in-memory store behind `gs://`; returns its dict {path: file}."""
  if os.environ.get('EPATH_USE_TF', '1').lower() not in ('false', 'no', 'f', '0') and \
      importlib.util.find_spec('tensorflow') is not None:
    pytest.skip('with TensorFlow installed epath uses tf.io.gfile for gs://; '
                'run with EPATH_USE_TF=0')
  from etils.epath import backend  # pylint: disable=g-import-not-at-top

  class FakeGCS(memory.MemoryFileSystem):
    protocol = ('gs', 'gcs')
    store = {}  # Its own, not MemoryFileSystem's global one.
    pseudo_dirs = ['']

  before = {name: fsspec.registry.get(name) for name in ('gs', 'gcs')}
  for name in before:
    fsspec.register_implementation(name, FakeGCS, clobber=True)
  backend.fsspec_backend._get_filesystem.cache_clear()  # epath caches the filesystem.
  yield FakeGCS.store
  backend.fsspec_backend._get_filesystem.cache_clear()
  for name, cls in before.items():
    if cls is None:
      # fsspec has no unregister; its module-level dict is what register_implementation set.
      registry = importlib.import_module('fsspec.registry')
      registry._registry.pop(name, None)  # pylint: disable=protected-access
    else:
      fsspec.register_implementation(name, cls, clobber=True)


def _object(store, path) -> bytes:
  return store[path].getvalue()


def test_path_helpers_keep_uris_intact():
  assert io.join(RUN, 'checkpoints', '3') == 'gs://bucket/run/checkpoints/3'
  assert io.join(RUN + '/', 'metrics.jsonl') == 'gs://bucket/run/metrics.jsonl'
  assert io.abspath('s3://b/x') == 's3://b/x' and io.dirname('gs://b/x/y.npz') == 'gs://b/x'
  assert io.join('runs/a', 'b') == os.path.join('runs/a', 'b')
  assert io.abspath('runs/a') == os.path.abspath('runs/a')
  assert not io.is_uri('runs/gs:/x') and io.is_uri('gs://b')
  for bad in ('ftp://host/run', 'GS://bucket/run'):  # epath would make a folder of these.
    with pytest.raises(UserInputError, match='unsupported URI scheme'):
      io.join(bad, 'x')


def test_atomic_write_uploads_whole_object_and_refuses_overwrite(fake_gcs):
  path = RUN + '/out.bin'
  with pytest.raises(RuntimeError):
    with io.atomic_write(path) as f:
      f.write(b'half')
      raise RuntimeError('interrupted')
  assert path not in fake_gcs and not io.exists(path)
  with io.atomic_write(path) as f:
    f.write(b'whole')
  assert _object(fake_gcs, path) == b'whole' and io.exists(path)
  with pytest.raises(UserInputError, match='gs://bucket/run/out.bin already exists'):
    with io.atomic_write(path) as f:
      f.write(b'other')
  with pytest.raises(RuntimeError):  # A failed overwrite keeps the old object.
    with io.atomic_write(path, overwrite=True) as f:
      f.write(b'partial')
      raise RuntimeError('interrupted')
  assert _object(fake_gcs, path) == b'whole'
  with io.atomic_write(path, overwrite=True) as f:
    f.write(b'new')
  with io.atomic_write(RUN + '/a.txt', 'w') as f:
    f.write('naïve\n')
  assert _object(fake_gcs, path) == b'new'
  assert _object(fake_gcs, RUN + '/a.txt') == 'naïve\n'.encode('utf-8')
  assert sorted(fake_gcs) == [RUN + '/a.txt', path]  # No temporaries left behind.


def test_object_appearing_during_write_is_not_overwritten(fake_gcs):
  path = RUN + '/final.json'
  with pytest.raises(UserInputError, match='appeared while it was being written'):
    with io.atomic_write(path, 'w') as f:
      f.write('{}')
      with io.atomic_write(path, 'w') as other:  # Another writer finishes first.
        other.write('theirs')
  assert _object(fake_gcs, path) == b'theirs'


def test_interrupted_upload_is_discarded_not_committed(monkeypatch):
  calls = []

  class Upload:  # An fsspec/gcsfs writer: close() would commit what it has.
    closed = False

    def write(self, data):
      calls.append(('write', len(data)))
      raise KeyboardInterrupt

    def discard(self):
      calls.append('discard')

    def close(self):
      calls.append('close')

  class Path:
    def __init__(self, path):
      del path

    def exists(self):
      return False

    def open(self, mode):
      assert mode == 'wb'
      return upload

  upload = Upload()
  monkeypatch.setattr(io, '_epath', Path)
  with pytest.raises(KeyboardInterrupt):
    with io.atomic_write(RUN + '/model.npz', overwrite=True) as f:
      f.write(b'x' * 100)
  assert calls == [('write', 100), 'discard'] and upload.closed


def test_write_json_matches_local(fake_gcs, tmp_path):
  obj = {'accuracy': np.float64(0.5), 'loss': float('nan'), 'n': np.int32(3)}
  metrics_log.write_json(tmp_path / 'final.json', obj)
  metrics_log.write_json(RUN + '/final.json', obj)
  assert _object(fake_gcs, RUN + '/final.json') == (tmp_path / 'final.json').read_bytes()
  assert json.loads(_object(fake_gcs, RUN + '/final.json'))['loss'] == 'nan'
  with pytest.raises(UserInputError, match='already exists'):
    metrics_log.write_json(RUN + '/final.json', {'n': 4}, overwrite=False)


def _log_rows(log):
  for step in range(1, 6):
    log.write(step, {'loss': np.float32(1.0 / step), 'lr': 0.1}, split='train')
  log.write(5, {'accuracy': 0.75}, split='eval')


def test_metrics_log_and_events_on_gs_match_local(fake_gcs, tmp_path, monkeypatch):
  monkeypatch.setattr(tfevents.time, 'time', lambda: 1700000000.25)  # Same names and rows.
  local = metrics_log.MetricsLog(tmp_path)
  _log_rows(local)
  local.close()
  log = metrics_log.MetricsLog(RUN, upload_every_s=3600)
  jsonl = RUN + '/metrics.jsonl'
  steps = lambda: [r['step'] for r in metrics_log.read_jsonl(jsonl)]
  log.write(1, {'loss': np.float32(1.0), 'lr': 0.1})
  assert steps() == [1]  # The first row goes up at once...
  for step in (2, 3):
    log.write(step, {'loss': np.float32(1.0 / step), 'lr': 0.1})
  assert steps() == [1]  # ...later ones every upload_every_s...
  log.flush()
  assert steps() == [1, 2, 3]  # ...or on flush(),
  for step in (4, 5):
    log.write(step, {'loss': np.float32(1.0 / step), 'lr': 0.1})
  log.write(5, {'accuracy': 0.75}, split='eval')
  log.flush()
  assert steps() == [1, 2, 3, 4, 5, 5]
  log.close()
  assert _object(fake_gcs, jsonl) == (tmp_path / 'metrics.jsonl').read_bytes()
  assert [(r['step'], r['split']) for r in metrics_log.read_jsonl(jsonl)] == \
      [(1, 'train'), (2, 'train'), (3, 'train'), (4, 'train'), (5, 'train'), (5, 'eval')]
  (name,) = os.listdir(tmp_path / 'tensorboard')  # Its framing is checked in test_core_*.
  event_path = f'{RUN}/tensorboard/{name}'
  assert _object(fake_gcs, event_path) == (tmp_path / 'tensorboard' / name).read_bytes()

  resumed = metrics_log.MetricsLog(RUN, tensorboard=False, upload_every_s=0)
  resumed.write(6, {'loss': 0.1})  # A resumed run appends; 0 s: uploaded on every row.
  resumed.write(7, {'loss': 0.1})
  assert steps() == [1, 2, 3, 4, 5, 5, 6, 7]
  resumed.close()


def test_event_writer_flush_uploads(fake_gcs, monkeypatch):
  monkeypatch.setattr(tfevents.time, 'time', lambda: 1700000000.25)
  writer = tfevents.EventWriter(RUN + '/tb', upload_every_s=3600)
  header = _object(fake_gcs, writer.path)  # The first record goes up at once.
  writer.scalars(1, {'train/loss': 2.0})
  assert _object(fake_gcs, writer.path) == header
  writer.flush()
  expected = header + tfevents.frame_record(
      tfevents.encode_event(wall_time=1700000000.25, step=1, scalars={'train/loss': 2.0}))
  assert _object(fake_gcs, writer.path) == expected
  writer.close()


def test_npz_round_trip_on_gs(fake_gcs):
  flat = {'Transformer/encoder_norm/scale': np.arange(6, dtype=np.float32),
          'head/kernel': np.ones((3, 2), np.float16), 'step': np.int64(7)}
  path = RUN + '/model.npz'
  npz.save_flat(path, flat)
  back = npz.load_flat(path)
  assert sorted(back) == sorted(flat)
  for key, value in flat.items():
    np.testing.assert_array_equal(back[key], value)
    assert back[key].dtype == np.asarray(value).dtype
  with pytest.raises(UserInputError, match='already exists'):
    npz.save_flat(path, {'x': np.zeros(1)})
  npz.save_flat(path, {'x': np.zeros(1)}, overwrite=True)
  assert list(npz.load_flat(path)) == ['x']
  with pytest.raises(FileNotFoundError, match='gs://bucket/run/absent.npz'):
    npz.load_flat(RUN + '/absent.npz')


def test_palette_round_trip_on_gs(fake_gcs):
  from igpt_jax import palette  # pylint: disable=g-import-not-at-top
  centers = np.random.default_rng(0).uniform(-1, 1, (16, 3)).astype(np.float32)
  palette.save_palette(RUN + '/palette.npy', centers)
  np.testing.assert_array_equal(palette.load_palette(RUN + '/palette.npy'), centers)


def test_missing_filesystem_package_is_a_clear_error():
  """Also checks that the fixture's registration of the fake gs:// is undone."""
  if importlib.util.find_spec('gcsfs') or importlib.util.find_spec('tensorflow'):
    pytest.skip('gcsfs or TensorFlow is installed: gs:// would reach the network')
  with pytest.raises(UserInputError, match=r'gs://b/x: gs:// paths need the gcsfs package'):
    io.exists('gs://b/x')


def test_checkpointer_passes_gs_directory_to_orbax_unchanged(monkeypatch, tmp_path):
  seen = []

  class RecordingManager:  # Orbax itself is not run against the fake store.
    def __init__(self, directory, **kwargs):
      del kwargs
      seen.append(directory)

  monkeypatch.setattr(checkpointing.ocp, 'CheckpointManager', RecordingManager)
  ckpt = checkpointing.Checkpointer(io.join(RUN, 'checkpoints'))
  assert ckpt.directory == seen[-1] == 'gs://bucket/run/checkpoints'
  checkpointing.Checkpointer(tmp_path / 'checkpoints')
  assert seen[-1] == os.path.abspath(tmp_path / 'checkpoints')


def test_vit_training_with_gs_workdir_resumes_and_matches_local(fake_gcs, tmp_path,
                                                                monkeypatch):
  """The whole ViT run on gs://bucket/run: crash after the step-3 checkpoint, resume, and
  get the local run's weights. Orbax is kept on the local disk (it is not run against the
  fake store); the test checks the directory the trainer asks it for."""
  from tests import vit_train_helpers as helpers  # pylint: disable=g-import-not-at-top
  from vit_jax import checkpoint as vit_checkpoint  # pylint: disable=g-import-not-at-top
  from vit_jax import train_loop  # pylint: disable=g-import-not-at-top
  dataset = helpers.write_dataset(tmp_path / 'ds')
  reference = train_loop.train_and_evaluate(helpers.tiny_config(dataset),
                                            str(tmp_path / 'local'))
  requested, real = [], checkpointing.Checkpointer

  def local_checkpointer(directory, **kwargs):
    requested.append(directory)
    return real(tmp_path / 'orbax', **kwargs)
  monkeypatch.setattr(checkpointing, 'Checkpointer', local_checkpointer)

  def crash(step):
    if step == 5:
      raise KeyboardInterrupt
  with pytest.raises(KeyboardInterrupt):
    train_loop.train_and_evaluate(helpers.tiny_config(dataset), RUN, on_step=crash)
  rows = metrics_log.read_jsonl(RUN + '/metrics.jsonl')  # Flushed although it crashed.
  assert [r['step'] for r in rows] == [1, 2, 3, 4, 5]
  final = train_loop.train_and_evaluate(helpers.tiny_config(dataset), RUN)

  assert requested == [RUN + '/checkpoints'] * 2
  assert final['model_npz'] == RUN + '/model.npz' and final['step'] == 6
  assert final['test_accuracy'] == reference['test_accuracy']
  weights, local = npz.load_flat(RUN + '/model.npz'), npz.load_flat(tmp_path / 'local' /
                                                                    'model.npz')
  assert weights.keys() == local.keys()
  for key, value in weights.items():
    np.testing.assert_array_equal(value, local[key])
  assert vit_checkpoint.load(RUN + '/model.npz').keys() == {'Transformer', 'cls', 'embedding',
                                                            'head'}
  rows = metrics_log.read_jsonl(RUN + '/metrics.jsonl')
  assert [(r['step'], r['split']) for r in rows] == \
      [(s, 'train') for s in (1, 2, 3, 4, 5, 6)] + [(6, 'eval')]
  # Steps 4 and 5 of the crashed run came after its last checkpoint: set aside, not lost.
  aside = metrics_log.read_jsonl(RUN + '/metrics.superseded.jsonl')
  assert [r['step'] for r in aside] == [4, 5]
  assert json.loads(io.read_bytes(RUN + '/final.json')) == json.loads(json.dumps(final))
  assert json.loads(io.read_bytes(RUN + '/model.json'))['num_classes'] == 2
  assert json.loads(io.read_bytes(RUN + '/config.json'))['total_steps'] == 6
  events = [p for p in fake_gcs if p.startswith(RUN + '/tensorboard/events.out.tfevents.')]
  assert len(events) == 2  # One event file per run, as TensorBoard expects.
  assert not [p for p in fake_gcs if not p.startswith(RUN + '/')]


def test_gan_training_with_gs_workdir(fake_gcs, tiny_config, tmp_path, monkeypatch):
  """gan_jax.main.run on gs://bucket/gan: samples, metrics, generator.npz and final.json go
  to the bucket; orbax is kept local (the test checks the directory it is asked for)."""
  from gan_jax import generators, main  # pylint: disable=g-import-not-at-top
  requested, real = [], checkpointing.Checkpointer

  def local_checkpointer(directory, **kwargs):
    requested.append(directory)
    return real(tmp_path / 'orbax', **kwargs)
  monkeypatch.setattr(checkpointing, 'Checkpointer', local_checkpointer)
  tiny_config.total_steps = 2
  final = main.run(tiny_config, 'gs://bucket/gan')
  assert requested == ['gs://bucket/gan/checkpoints']
  rows = metrics_log.read_jsonl('gs://bucket/gan/metrics.jsonl')
  assert [(r['step'], r['split']) for r in rows] == [(2, 'train'), (2, 'eval')]
  assert json.loads(io.read_bytes('gs://bucket/gan/final.json')) == final
  generator = generators.load('gs://bucket/gan/generator.npz')
  assert generator.image_size == 28 and generator.latent_dim == 8
  png = io.read_bytes('gs://bucket/gan/samples/step_000002.png')
  assert png.startswith(b'\x89PNG')
  assert any(p.startswith('gs://bucket/gan/tensorboard/events.out.') for p in fake_gcs)


def test_igpt_training_with_gs_workdir(fake_gcs, tmp_path, monkeypatch):
  """igpt_jax.train on gs://bucket/igpt, then fine-tuning from its params.npz: the palette is
  found beside those weights in the bucket. Orbax is kept local."""
  from igpt_jax import palette, train  # pylint: disable=g-import-not-at-top
  from tests import test_igpt_train, vit_train_helpers  # pylint: disable=g-import-not-at-top
  requested, real = [], checkpointing.Checkpointer

  def local_checkpointer(directory, **kwargs):
    requested.append(directory)
    return real(tmp_path / 'orbax' / str(len(requested)), **kwargs)
  monkeypatch.setattr(checkpointing, 'Checkpointer', local_checkpointer)
  dataset = vit_train_helpers.write_dataset(tmp_path / 'ds', train_per_class=8,
                                            test_per_class=4)
  small = dict(batch_size=8, total_steps=2, eval_every=2, checkpoint_every=2, log_every=1,
               eval_examples=8, palette_fit_images=16, palette_fit_steps=2,
               sample_grid=False, warmup_steps=0)
  result = train.train_and_evaluate(test_igpt_train.tiny_config(dataset, **small),
                                    'gs://bucket/igpt')
  assert result['workdir'] == 'gs://bucket/igpt' and result['step'] == 2
  steps = [r['step'] for r in metrics_log.read_jsonl('gs://bucket/igpt/metrics.jsonl')]
  assert steps == [0, 1, 2, 2]  # Initial test, two train rows, final test.
  centers = palette.load_palette('gs://bucket/igpt/palette.npy', num_clusters=512)
  assert json.loads(io.read_bytes('gs://bucket/igpt/final.json'))['step'] == 2

  tuned = train.train_and_evaluate(test_igpt_train.tiny_config(
      dataset, objective='finetune', init_from='gs://bucket/igpt/params.npz', **small),
                                   'gs://bucket/igpt_ft')
  assert 'accuracy' in tuned['test']
  np.testing.assert_array_equal(palette.load_palette('gs://bucket/igpt_ft/palette.npy'),
                                centers)
  assert requested == ['gs://bucket/igpt/checkpoints', 'gs://bucket/igpt_ft/checkpoints']
