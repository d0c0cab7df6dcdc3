"""vision_core checkpointing, metric logs (JSONL + TensorBoard event files) and sharding rules."""

import json
import os
import shutil
import struct
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from vision_core import checkpointing, data, mesh as mesh_lib, metrics_log, sharding, tfevents
from vision_core.errors import UserInputError


def test_checkpoint_keeps_last_n_restores_state_and_data(tmp_path):
  source = data.ArraySource(np.arange(40, dtype=np.uint8)[:, None, None, None]
                            * np.ones((1, 2, 2, 3), np.uint8), np.arange(40) % 2)
  loader = data.train_loader(source, global_batch_size=4, preprocess='', seed=1)
  it = iter(loader)
  ckpt = checkpointing.Checkpointer(tmp_path, max_to_keep=2)
  state = {'params': {'w': jnp.arange(6.0).reshape(2, 3)}, 'step': jnp.int32(0)}
  expected_next = {}
  for step in (1, 2, 3):
    next(it)
    state = {'params': {'w': state['params']['w'] + 1}, 'step': jnp.int32(step)}
    ckpt.save(step, state, data_iterator=it)
    ckpt.wait()
    expected_next[step] = next(iter([next(it)]))['image'][:, 0, 0, 0]
    it.set_state(it.get_state())  # no-op: the iterator continues
  ckpt.close()
  assert sorted(os.listdir(tmp_path)) == ['2', '3']
  # A half-written checkpoint (orbax's temporary folder) is never taken as the latest.
  os.makedirs(tmp_path / '9.orbax-checkpoint-tmp-1234')
  reopened = checkpointing.Checkpointer(tmp_path)
  assert reopened.latest_step() == 3
  fresh = iter(loader)
  restored = reopened.restore(checkpointing.abstract_like(state), data_iterator=fresh, step=2)
  np.testing.assert_array_equal(restored['params']['w'], np.arange(6.0).reshape(2, 3) + 2)
  assert int(restored['step']) == 2
  np.testing.assert_array_equal(next(fresh)['image'][:, 0, 0, 0], expected_next[2])
  with pytest.raises(UserInputError, match='does not match'):
    reopened.restore(checkpointing.abstract_like({'params': {'w': jnp.zeros((3, 3))},
                                                  'step': jnp.int32(0)}))
  # As if written by 2 processes: this single process has no data position of its own.
  os.rename(tmp_path / '3' / 'data' / 'process_0-of-1.json',
            tmp_path / '3' / 'data' / 'process_0-of-2.json')
  with pytest.raises(UserInputError, match='process_0-of-1.json.*another number of processes'):
    reopened.restore(checkpointing.abstract_like(state), data_iterator=iter(loader))
  # With `seek_data`, the state is restored and the data positioned from the step instead.
  fresh, sought = iter(loader), []
  def seek(step):
    sought.append(step)
    data.seek(fresh, batches=step, global_batch_size=4)
  restored = reopened.restore(checkpointing.abstract_like(state), data_iterator=fresh,
                              seek_data=seek)
  assert sought == [3] and int(restored['step']) == 3
  fourth = iter(loader)
  for _ in range(3):
    next(fourth)
  np.testing.assert_array_equal(next(fresh)['image'], next(fourth)['image'])
  reopened.close()


def test_checkpointer_creates_its_folder_only_when_it_saves(tmp_path):
  # A run refused before its first save must not leave an empty checkpoints/ folder behind.
  directory = tmp_path / 'run' / 'checkpoints'
  ckpt = checkpointing.Checkpointer(directory)
  assert ckpt.latest_step() is None and ckpt.all_steps() == []
  assert not os.path.exists(tmp_path / 'run')
  ckpt.save(1, {'w': jnp.ones(2)})
  ckpt.close()
  assert os.listdir(directory) == ['1']


def test_resume_from_a_checkpoint_of_grains_index_sampler(tmp_path):
  """Checkpoints written before GlobalBatchSampler hold an IndexSampler position; the run
  goes on from that position, in the loader's stream (grain's, keyed by seed + index, made
  adjacent seeds share orders and augmentations, so it is not replayed)."""
  import grain.python as grain  # pylint: disable=g-import-not-at-top
  source = data.ArraySource(np.arange(40, dtype=np.uint8)[:, None, None, None]
                            * np.ones((1, 2, 2, 3), np.uint8), np.arange(40) % 2)
  old = iter(grain.DataLoader(
      data_source=source, operations=[data.parse_preprocess('flip_lr'), grain.Batch(4)],
      sampler=grain.IndexSampler(num_records=40, shard_options=grain.ShardByJaxProcess(True),
                                 shuffle=True, seed=1)))
  for _ in range(12):  # into the second epoch
    next(old)
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=False)
  state = {'w': jnp.ones(3)}
  ckpt.save(12, state, data_iterator=old)
  new = iter(data.train_loader(source, global_batch_size=4, preprocess='flip_lr', seed=1))
  ckpt.restore(checkpointing.abstract_like(state), data_iterator=new,
               seek_data=lambda step: data.seek(new, batches=step, global_batch_size=4))
  uninterrupted = iter(data.train_loader(source, global_batch_size=4, preprocess='flip_lr',
                                         seed=1))
  for _ in range(12):
    next(uninterrupted)
  for _ in range(3):
    np.testing.assert_array_equal(next(new)['image'], next(uninterrupted)['image'])
  ckpt.close()


@pytest.mark.parametrize('batch, seed', [(8, 1), (4, 2)])
def test_resume_with_another_batch_or_seed_names_the_data_not_the_model(tmp_path, batch, seed):
  # grain refuses such a position from inside the restore; that error was reported as "the
  # checkpoint does not match this run's model or optimizer".
  source = data.ArraySource(np.arange(40, dtype=np.uint8)[:, None, None, None]
                            * np.ones((1, 2, 2, 3), np.uint8), np.arange(40) % 2)
  first = iter(data.train_loader(source, global_batch_size=4, preprocess='', seed=1))
  next(first)
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=False)
  state = {'w': jnp.ones(3)}
  ckpt.save(1, state, data_iterator=first)
  other = iter(data.train_loader(source, global_batch_size=batch, preprocess='', seed=seed))
  with pytest.raises(UserInputError, match=r'/1: the checkpoint\'s data position was saved by '
                     r'another input pipeline .*\n  checkpoint: GlobalBatchSampler\(num_records'
                     r'=40, per_process_batch=4, seed=1,') as e:
    ckpt.restore(checkpointing.abstract_like(state), data_iterator=other,
                 seek_data=lambda step: data.seek(other, batches=step, global_batch_size=batch))
  assert 'model or optimizer' not in str(e.value)
  assert f'per_process_batch={batch}, seed={seed},' in str(e.value)
  ckpt.close()


def test_resume_with_another_number_of_grain_workers(tmp_path):
  source = data.ArraySource(np.arange(40, dtype=np.uint8)[:, None, None, None]
                            * np.ones((1, 2, 2, 3), np.uint8), np.arange(40) % 2)
  def loader(workers):
    return data.train_loader(source, global_batch_size=4, preprocess='flip_lr', seed=1,
                             worker_count=workers)
  plain = iter(loader(0))
  for _ in range(3):
    next(plain)
  ckpt = checkpointing.Checkpointer(tmp_path, async_save=False)
  state = {'w': jnp.ones(3)}
  ckpt.save(3, state, data_iterator=plain)
  with_workers = iter(loader(2))
  ckpt.restore(checkpointing.abstract_like(state), data_iterator=with_workers,
               seek_data=lambda step: data.seek(with_workers, batches=step, global_batch_size=4))
  for _ in range(3):
    np.testing.assert_array_equal(next(with_workers)['image'], next(plain)['image'])
  ckpt.close()


def _three_checkpoints(directory):
  ckpt = checkpointing.Checkpointer(directory, async_save=False)
  state = {'params': {'w': jnp.arange(4096.0).reshape(64, 64)}, 'step': jnp.int32(0)}
  for step in (1, 2, 3):
    ckpt.save(step, state)
  return ckpt, state


def test_a_checkpoint_without_its_state_names_the_one_before(tmp_path):
  ckpt, state = _three_checkpoints(tmp_path)
  shutil.rmtree(tmp_path / '3' / 'state')
  # Before: "does not match this run's model or optimizer ... use a new workdir", which
  # would throw away a run whose steps 1 and 2 are intact.
  for restore in (lambda: ckpt.restore(checkpointing.abstract_like(state)),
                  lambda: ckpt.restore_part('params', checkpointing.abstract_like(
                      state['params']))):
    with pytest.raises(UserInputError, match=r'/3: this checkpoint cannot be read; it looks '
                       r'damaged \(its state/ folder is missing\)\. Move it .* uses step 2'):
      restore()
  ckpt.close()


def test_a_truncated_checkpoint_file_is_reported_as_damage(tmp_path):
  ckpt, state = _three_checkpoints(tmp_path)
  data_files = sorted((tmp_path / '3' / 'state').rglob('d/*'), key=lambda f: f.stat().st_size)
  data_files[-1].write_bytes(data_files[-1].read_bytes()[:100])
  # Before: orbax's bare Exception escaped (and hundreds of lines of its other reads).
  with pytest.raises(UserInputError, match=r'/3: this checkpoint cannot be read; it looks '
                     r'damaged \(ValueError: .*\).* uses step 2'):
    ckpt.restore(checkpointing.abstract_like(state))
  with pytest.raises(UserInputError, match='it looks damaged'):
    ckpt.restore_part('params', checkpointing.abstract_like(state['params']))
  np.testing.assert_array_equal(  # the step before is untouched
      ckpt.restore(checkpointing.abstract_like(state), step=2)['params']['w'],
      state['params']['w'])
  ckpt.close()


def test_a_checkpoint_of_another_optimizer_names_the_arrays(tmp_path):
  ckpt, state = _three_checkpoints(tmp_path)
  other = {**state, 'opt': {'mu': jnp.zeros((64, 64))}}
  with pytest.raises(UserInputError, match=r'(?s)/3: the checkpoint does not match this run\'s '
                     r'model or optimizer; its arrays differ \(1\):\n  opt/mu: not in the '
                     r'checkpoint'):
    ckpt.restore(checkpointing.abstract_like(other))
  del other['opt'], other['step']
  with pytest.raises(UserInputError, match=r'arrays differ \(1\):\n  step: in the checkpoint, '
                     'not in this run'):
    ckpt.restore(checkpointing.abstract_like(other))
  ckpt.close()


def test_crc32c_check_value():
  assert tfevents.crc32c(b'123456789') == 0xE3069283


def _event_classes():
  """Event/Summary messages declared here from the TensorFlow .proto field numbers."""
  fdp = descriptor_pb2.FileDescriptorProto(name='test_event.proto', package='t')
  f = descriptor_pb2.FieldDescriptorProto
  value = fdp.message_type.add(name='Value')
  value.field.add(name='tag', number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
  value.field.add(name='simple_value', number=2, type=f.TYPE_FLOAT, label=f.LABEL_OPTIONAL)
  summary = fdp.message_type.add(name='Summary')
  summary.field.add(name='value', number=1, type=f.TYPE_MESSAGE, label=f.LABEL_REPEATED,
                    type_name='.t.Value')
  event = fdp.message_type.add(name='Event')
  event.field.add(name='wall_time', number=1, type=f.TYPE_DOUBLE, label=f.LABEL_OPTIONAL)
  event.field.add(name='step', number=2, type=f.TYPE_INT64, label=f.LABEL_OPTIONAL)
  event.field.add(name='file_version', number=3, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
  event.field.add(name='summary', number=5, type=f.TYPE_MESSAGE, label=f.LABEL_OPTIONAL,
                  type_name='.t.Summary')
  pool = descriptor_pool.DescriptorPool()
  pool.Add(fdp)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName('t.Event'))


def _masked(crc):
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_metrics_jsonl_and_event_file_decode(tmp_path):
  log = metrics_log.MetricsLog(tmp_path)
  log.write(5, {'loss': np.float32(1.5), 'lr': 0.01}, split='train')
  log.write(10, {'accuracy': 0.75}, split='eval')
  log.close()
  rows = metrics_log.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [(r['step'], r['split']) for r in rows] == [(5, 'train'), (10, 'eval')]
  assert rows[0]['loss'] == 1.5 and rows[1]['accuracy'] == 0.75
  (name,) = os.listdir(tmp_path / 'tensorboard')
  assert 'tfevents' in name
  raw = (tmp_path / 'tensorboard' / name).read_bytes()
  event_class = _event_classes()
  events, pos = [], 0
  while pos < len(raw):
    (length,) = struct.unpack('<Q', raw[pos:pos + 8])
    (length_crc,) = struct.unpack('<I', raw[pos + 8:pos + 12])
    assert length_crc == _masked(tfevents.crc32c(raw[pos:pos + 8]))
    payload = raw[pos + 12:pos + 12 + length]
    (data_crc,) = struct.unpack('<I', raw[pos + 12 + length:pos + 16 + length])
    assert data_crc == _masked(tfevents.crc32c(payload))
    events.append(event_class.FromString(payload))
    pos += 16 + length
  assert events[0].file_version == 'brain.Event:2'
  scalars = {(e.step, v.tag): v.simple_value for e in events[1:] for v in e.summary.value}
  assert scalars == {(5, 'train/loss'): 1.5, (5, 'train/lr'): pytest.approx(0.01),
                     (10, 'eval/accuracy'): 0.75}


def test_non_finite_metrics_reach_tensorboard(tmp_path):
  # The JSON row holds NaN as the string 'nan'; TensorBoard used to get nothing at all, so
  # a diverged run's curve just stopped before the divergence.
  log = metrics_log.MetricsLog(tmp_path)
  log.write(7, {'loss': np.float32('nan'), 'grad_norm': float('inf'), 'lr': 0.5})
  log.close()
  (row,) = metrics_log.read_jsonl(tmp_path / 'metrics.jsonl')
  assert (row['loss'], row['grad_norm'], row['lr']) == ('nan', 'inf', 0.5)
  (name,) = os.listdir(tmp_path / 'tensorboard')
  raw = (tmp_path / 'tensorboard' / name).read_bytes()
  event_class, events, pos = _event_classes(), [], 0
  while pos < len(raw):
    (length,) = struct.unpack('<Q', raw[pos:pos + 8])
    events.append(event_class.FromString(raw[pos + 12:pos + 12 + length]))
    pos += 16 + length
  scalars = {v.tag: v.simple_value for e in events[1:] for v in e.summary.value}
  assert sorted(scalars) == ['train/grad_norm', 'train/loss', 'train/lr']
  assert np.isnan(scalars['train/loss']) and scalars['train/grad_norm'] == np.inf


def test_resumed_log_sets_aside_rows_after_the_checkpoint(tmp_path):
  """A run logged steps 1-10 and died with its last checkpoint at 6: the resumed run's log
  holds steps 1-6 and then its own, once each, in metrics.jsonl and in TensorBoard."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  first = metrics_log.MetricsLog(tmp_path)
  for step in range(1, 11):
    first.write(step, {'loss': float(step)})
  first.close()
  (tmp_path / 'metrics.jsonl').open('a').write('{"step": 11, "spli')  # cut off by the crash
  time.sleep(1.1)  # TensorBoard orders event files by the second in their names.
  resumed = metrics_log.MetricsLog(tmp_path, resume_step=6)
  for step in range(7, 9):
    resumed.write(step, {'loss': 100.0 + step})
  resumed.close()
  rows = metrics_log.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [(r['step'], r['loss']) for r in rows] == (
      [(s, float(s)) for s in range(1, 7)] + [(7, 107.0), (8, 108.0)])
  aside = (tmp_path / 'metrics.superseded.jsonl').read_text().splitlines()
  assert [json.loads(r)['step'] for r in aside[:-1]] == [7, 8, 9, 10]
  assert aside[-1] == '{"step": 11, "spli'  # kept, out of the way
  acc = event_accumulator.EventAccumulator(str(tmp_path / 'tensorboard'))
  acc.Reload()
  assert [(e.step, e.value) for e in acc.Scalars('train/loss')] == (
      [(s, float(s)) for s in range(1, 7)] + [(7, 107.0), (8, 108.0)])
  # Without a checkpoint (-1) every earlier row is set aside; None only appends.
  metrics_log.MetricsLog(tmp_path, resume_step=None).close()
  assert len(metrics_log.read_jsonl(tmp_path / 'metrics.jsonl')) == 8
  metrics_log.MetricsLog(tmp_path, resume_step=-1).close()
  assert not (tmp_path / 'metrics.jsonl').read_text()
  assert len((tmp_path / 'metrics.superseded.jsonl').read_text().splitlines()) == 13


def test_a_row_written_once_is_not_logged_again(tmp_path):
  """A run that logged its final evaluation and stopped before final.json is finished by a
  run that evaluates that step again: its row is not appended a second time."""
  first = metrics_log.MetricsLog(tmp_path)
  first.write(6, {'loss': 1.0})
  first.write(6, {'accuracy': 0.5}, split='eval', once=True)
  first.close()
  resumed = metrics_log.MetricsLog(tmp_path, resume_step=6)
  resumed.write(6, {'accuracy': 0.5}, split='eval', once=True)  # kept at the resume: skipped
  resumed.write(6, {'bits': 2.0}, split='test', once=True)  # another split: written
  resumed.write(6, {'bits': 2.0}, split='test', once=True)  # written just now: skipped
  resumed.write(6, {'accuracy': 0.6}, split='eval')  # without once: appended, as before
  assert resumed.logged(6) == {'loss': 1.0} and resumed.logged(6, 'test') == {'bits': 2.0}
  assert resumed.logged(5) is None
  resumed.close()
  rows = metrics_log.read_jsonl(tmp_path / 'metrics.jsonl')
  assert [(r['step'], r['split']) for r in rows] == [
      (6, 'train'), (6, 'eval'), (6, 'test'), (6, 'eval')]


def test_other_processes_read_the_kept_rows_and_write_nothing(tmp_path, monkeypatch):
  """On a pod, process 1's `logged` (a finished run's last metrics in its returned dict) used
  to be None: only process 0 read metrics.jsonl."""
  first = metrics_log.MetricsLog(tmp_path)
  for step in (3, 6, 9):
    first.write(step, {'loss': float(step)})
  first.close()
  before = (tmp_path / 'metrics.jsonl').read_bytes()
  monkeypatch.setattr(metrics_log.jax, 'process_index', lambda: 1)
  other = metrics_log.MetricsLog(tmp_path, resume_step=6)
  assert other.logged(6) == {'loss': 6.0} and other.logged(9) is None  # 9: after the resume
  other.write(6, {'accuracy': 0.5}, split='eval', once=True)
  assert other.logged(6, 'eval') == {'accuracy': 0.5}
  other.close()
  assert (tmp_path / 'metrics.jsonl').read_bytes() == before  # process 0 rewrites, not 1
  assert not (tmp_path / metrics_log.MetricsLog.SUPERSEDED).exists()


def test_write_json_atomic_and_progress(tmp_path):
  metrics_log.write_json(tmp_path / 'final.json', {'accuracy': np.float64(0.5), 'n': 3})
  assert json.loads((tmp_path / 'final.json').read_text()) == {'accuracy': 0.5, 'n': 3}
  bar = metrics_log.Progress(total_steps=10, images_per_step=4, disable=True)
  bar.update(2, loss=1.0, lr=0.1)
  bar.close()


def test_sharding_rules():
  mesh = mesh_lib.make_mesh((4, 2))
  tree = {'Transformer': {'encoderblock_0': {
      'MultiHeadDotProductAttention_0': {'query': {'kernel': np.zeros((8, 4, 2))},
                                         'out': {'kernel': np.zeros((4, 2, 8))}},
      'MlpBlock_0': {'Dense_0': {'kernel': np.zeros((8, 16)), 'bias': np.zeros(16)},
                     'Dense_1': {'kernel': np.zeros((16, 8))}}}},
          'head': {'kernel': np.zeros((8, 3))}, 'step': np.zeros(())}
  P = jax.sharding.PartitionSpec
  tp = sharding.partition_specs(tree, mesh, strategy='tp')
  block = tp['Transformer']['encoderblock_0']
  assert block['MultiHeadDotProductAttention_0']['query']['kernel'] == P(None, 'model', None)
  assert block['MultiHeadDotProductAttention_0']['out']['kernel'] == P('model', None, None)
  assert block['MlpBlock_0']['Dense_0']['kernel'] == P(None, 'model')
  assert block['MlpBlock_0']['Dense_1']['kernel'] == P('model', None)
  assert tp['head']['kernel'] == P(None, None) and tp['step'] == P()
  fsdp = sharding.partition_specs(tree, mesh, strategy='fsdp_tp', fsdp_min_size=1)
  assert fsdp['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel'] == P(
      'data', 'model')
  assert fsdp['head']['kernel'] == P('data', None)  # 8 rows split 4 ways; 3 columns not
  assert sharding.partition_specs(tree, mesh)['head']['kernel'] == P(None, None)
  with pytest.raises(UserInputError, match='expected one of'):
    sharding.partition_specs(tree, mesh, strategy='zero3')
  # A mesh of the user's with one axis: no 'model' axis, no tensor parallelism (was KeyError).
  data_only = jax.make_mesh((8,), ('data',))
  assert sharding.partition_specs(tree, data_only, strategy='tp')['head']['kernel'] == P(None,
                                                                                        None)
  assert sharding.partition_specs(tree, jax.make_mesh((8,), ('batch',)), strategy='fsdp',
                                  fsdp_min_size=1)['head']['kernel'] == P(None, None)


def test_replication_note_says_what_the_strategy_does_not_split():
  def block(heads, mlp):
    return {'Transformer': {'encoderblock_0': {
        'MultiHeadDotProductAttention_0': {'query': {'kernel': np.zeros((8, heads, 4))}},
        'MlpBlock_0': {'Dense_0': {'kernel': np.zeros((8, mlp))}}}}}
  # 2 heads and an MLP of 10 over a model axis of 4: nothing splits (a helper's sweep found
  # a whole model axis idle, said only at INFO level).
  note = sharding.replication_note(block(2, 10), mesh_lib.make_mesh((2, 4)), strategy='tp')
  assert note.startswith("sharding 'tp': 2 array axes that tensor parallelism splits over "
                         "'model' (4 devices) do not divide by it and are replicated (e.g. "
                         'Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel axis 1 (10))')
  assert sharding.replication_note(block(4, 16), mesh_lib.make_mesh((2, 4)),
                                   strategy='fsdp_tp', fsdp_min_size=1) is None
  note = sharding.replication_note(block(4, 16), mesh_lib.make_mesh((8, 1)), strategy='fsdp')
  assert note == ("sharding 'fsdp': FSDP splits no parameter over 'data' (8 devices): each has "
                  'fewer than 16384 values or no axis that divides by it.')
  assert sharding.replication_note(block(2, 10), mesh_lib.make_mesh((2, 4)),
                                   strategy='replicated') is None
