"""What `vit_jax.main` leaves in (and takes from) its workdir around the run itself: a run
refused before training starts, and a finished run started again."""

import json
import os
import re

import pytest

from tests import vit_train_helpers as helpers
from tests import workdir_files
from vision_core import checkpointing, metrics_log
from vision_core.errors import UserInputError
from vit_jax import train_loop


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  return helpers.write_dataset(tmp_path_factory.mktemp('ds'))


def _unreadable_train_images(root):
  """A dataset whose train class 'b' holds only files that are not images: the first
  train batch fails to decode (the images are read when batched, not when listed; the
  first image, which gives the channel count, is one of class 'a')."""
  helpers.write_dataset(root)
  for name in os.listdir(root / 'train' / 'b'):
    (root / 'train' / 'b' / name).write_text('not an image')
  return str(root)


REFUSED = {
    'attention': dict(attention='flash'),
    'dtype': dict(dtype='float64'),
    'optimizer': dict(optimizer='adamz'),
    'pp op': {'pp.train_ops': 'resize(8)|bogus(3)'},
    'pretrained': dict(pretrained='/nonexistent/ViT-B_16.npz'),
}


@pytest.mark.parametrize('name', sorted(REFUSED) + ['first batch'])
def test_a_refused_run_creates_nothing_in_a_fresh_workdir(dataset, tmp_path, name):
  if name == 'first batch':
    config = helpers.tiny_config(_unreadable_train_images(tmp_path / 'bad'))
  else:
    config = helpers.tiny_config(dataset, **REFUSED[name])
  workdir = tmp_path / 'runs' / 'w'
  with pytest.raises((UserInputError, FileNotFoundError)):
    train_loop.train_and_evaluate(config, str(workdir))
  assert not os.path.exists(tmp_path / 'runs')


@pytest.mark.parametrize('mode', ['train', 'evaluate'])
def test_a_missing_pretrained_file_names_the_field_and_creates_nothing(dataset, tmp_path, mode):
  # It was the npz reader's FileNotFoundError, naming neither the field nor what it takes.
  missing = str(tmp_path / 'ViT-B_16.npz')
  config = helpers.tiny_config(dataset, mode=mode, pretrained=missing)
  run = train_loop.train_and_evaluate if mode == 'train' else train_loop.evaluate_only
  with pytest.raises(UserInputError, match=(
      f'^pretrained={re.escape(missing)}: no such file \\(an official .npz checkpoint, e.g. '
      'ViT-B_16.npz, a model.npz written by vit_jax.main, or an HF ViT save_pretrained '
      'folder\\).$')):
    run(config, str(tmp_path / 'runs' / 'w'))
  assert not os.path.exists(tmp_path / 'runs')


# accum_steps=0 divided by zero; keep_checkpoints=0 deleted every checkpoint; negative
# periods were taken for 0; negative rates and out-of-range momenta trained nonsense.
BAD_FIELDS = [('total_steps', 0), ('accum_steps', 0), ('base_lr', -0.1), ('end_lr', -1e-5),
              ('weight_decay', -1e-4), ('grad_norm_clip', -1.0), ('momentum', 1.0),
              ('b2', -0.1), ('label_smoothing', 1.0), ('mixup_alpha', -0.2),
              ('eval_every', -1), ('checkpoint_every', -5), ('progress_every', -1),
              ('keep_checkpoints', 0), ('base_lr', float('nan'))]


@pytest.mark.parametrize('field,value', BAD_FIELDS)
def test_a_field_out_of_range_is_refused_by_name_before_the_workdir_is_made(
    dataset, tmp_path, field, value):
  with pytest.raises(UserInputError) as info:
    train_loop.train_and_evaluate(helpers.tiny_config(dataset, **{field: value}),
                                  str(tmp_path / 'runs' / 'w'))
  message = str(info.value)
  assert message.startswith(f'{field}={value}: expected') and '\n' not in message, message
  assert not os.path.exists(tmp_path / 'runs')


def test_a_refused_run_leaves_an_existing_workdir_as_it_was(dataset, tmp_path):
  workdir = tmp_path / 'w'
  os.makedirs(workdir / 'checkpoints')  # empty: e.g. left by an earlier version
  (workdir / 'notes.txt').write_text('mine')
  before = workdir_files.tree(workdir)
  with pytest.raises(UserInputError, match='notes.png|not a readable image'):
    train_loop.train_and_evaluate(helpers.tiny_config(_unreadable_train_images(
        tmp_path / 'bad')), str(workdir))
  assert workdir_files.tree(workdir) == before
  assert (workdir / 'notes.txt').read_text() == 'mine'


def test_a_finished_run_started_again_does_nothing_and_returns_its_result(
    dataset, tmp_path, capsys, monkeypatch):
  workdir = tmp_path / 'w'
  final = train_loop.train_and_evaluate(helpers.tiny_config(dataset), str(workdir))
  capsys.readouterr()
  before = workdir_files.snapshot(workdir)
  with monkeypatch.context() as patch:  # No duplicate work: not even the dataset is read.
    patch.setattr(train_loop, '_source', lambda *a, **k: pytest.fail('dataset read again'))
    again = train_loop.train_and_evaluate(helpers.tiny_config(dataset), str(workdir))
    out = capsys.readouterr().out
    assert again == json.loads(json.dumps(final))
    assert f'{workdir}: the run is already complete at step 6; its result is ' \
           f'{workdir / "final.json"}' in out
    # A lower total_steps does not shorten the finished run; it says so.
    lower = train_loop.train_and_evaluate(helpers.tiny_config(dataset, total_steps=4),
                                          str(workdir))
    assert lower == again
    assert 'total_steps=4 is below it' in capsys.readouterr().out
  assert workdir_files.snapshot(workdir) == before  # No eval row appended, nothing rewritten.
  # A higher total_steps continues the run, with one final eval at its new end.
  longer = train_loop.train_and_evaluate(helpers.tiny_config(dataset, total_steps=8),
                                         str(workdir))
  rows = metrics_log.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['step'] for r in rows if r['split'] == 'train'] == list(range(1, 9))
  assert [r['step'] for r in rows if r['split'] == 'eval'] == [6, 8]
  assert longer['step'] == 8
  assert json.loads((workdir / 'final.json').read_text())['step'] == 8


def test_a_run_stopped_before_final_json_is_finished_without_a_second_eval_row(
    dataset, tmp_path):
  """Stopped after its final evaluation was logged, before final.json: the run again writes
  final.json for the last step; the eval row is not appended a second time."""
  workdir = tmp_path / 'w'
  final = train_loop.train_and_evaluate(helpers.tiny_config(dataset), str(workdir))
  os.remove(workdir / 'final.json')
  again = train_loop.train_and_evaluate(helpers.tiny_config(dataset), str(workdir))
  assert again['step'] == 6 and again['test_accuracy'] == final['test_accuracy']
  assert json.loads((workdir / 'final.json').read_text())['step'] == 6
  rows = metrics_log.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['step'] for r in rows if r['split'] == 'train'] == list(range(1, 7))
  assert [r['step'] for r in rows if r['split'] == 'eval'] == [6]
  # Without final.json and with total_steps below the checkpoint, finishing it would log step
  # 6's evaluation as step 4's: refused, nothing written.
  os.remove(workdir / 'final.json')
  before = workdir_files.snapshot(workdir)
  with pytest.raises(UserInputError, match=r'^total_steps=4: .* checkpoint of step 6, past it, '
                     r'and no final\.json .* --config\.total_steps=6 to finish'):
    train_loop.train_and_evaluate(helpers.tiny_config(dataset, total_steps=4), str(workdir))
  assert workdir_files.snapshot(workdir) == before


@pytest.fixture
def opened_checkpointers(monkeypatch):
  """The Checkpointers that train_loop opens, each with `closed` set once it is closed."""
  opened = []

  class Recording(checkpointing.Checkpointer):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      self.closed = False
      opened.append(self)

    def close(self):
      self.closed = True
      super().close()
  monkeypatch.setattr(checkpointing, 'Checkpointer', Recording)
  return opened


def test_evaluate_closes_its_checkpointer_on_every_path(dataset, tmp_path,
                                                        opened_checkpointers):
  empty = tmp_path / 'empty'
  os.makedirs(empty / 'checkpoints')  # no checkpoint in it, no pretrained: nothing to score
  with pytest.raises(UserInputError, match='has no checkpoints'):
    train_loop.evaluate_only(helpers.tiny_config(dataset), str(empty))
  with pytest.raises(UserInputError, match='does not exist'):  # the dataset, after opening
    train_loop.evaluate_only(helpers.tiny_config(str(tmp_path / 'missing')), str(empty))
  trained = tmp_path / 'trained'
  train_loop.train_and_evaluate(helpers.tiny_config(dataset, total_steps=1, checkpoint_every=1),
                                str(trained))
  # Empty checkpoints folder, pretrained weights: scored, and the Checkpointer closed.
  result = train_loop.evaluate_only(helpers.tiny_config(
      dataset, pretrained=str(trained / 'model.npz')), str(empty))
  assert result['params'] == str(trained / 'model.npz')
  wider = helpers.tiny_config(dataset)
  wider.model.hidden_size = 12  # the checkpoint's arrays no longer fit
  with pytest.raises(UserInputError, match='arrays differ'):
    train_loop.evaluate_only(wider, str(trained))
  assert train_loop.evaluate_only(helpers.tiny_config(dataset), str(trained))['test_examples'] \
      == 14
  assert len(opened_checkpointers) == 6  # 5 evaluations and the training
  assert all(c.closed for c in opened_checkpointers)
