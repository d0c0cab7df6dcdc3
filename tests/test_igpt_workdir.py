"""What `igpt_jax.main` leaves in (and takes from) its workdir around the run itself: a run
refused before training starts, and a finished run started again."""

import json
import os

import numpy as np
import pytest

from igpt_jax import run_palette, train
from tests.test_igpt_model import tiny_model
from tests.test_igpt_train import _grey_run_config, image_folder, pretrained, tiny_config
from tests import workdir_files
from vision_core import metrics_log
from vision_core.errors import UserInputError


def _run_config(tmp_path, **overrides):
  """A 2-step run on an 8x8 two-class image folder with a given palette."""
  data = tmp_path / 'data'
  if not data.exists():
    image_folder(data, per_class=4)
    np.save(tmp_path / 'palette.npy',
            np.random.default_rng(1).uniform(-1, 1, (512, 3)).astype(np.float32))
  overrides = {**dict(batch_size=8, total_steps=2, eval_every=2, checkpoint_every=2,
                      log_every=1, warmup_steps=1, sample_grid=False,
                      palette=str(tmp_path / 'palette.npy')), **overrides}
  return tiny_config(data, **overrides)


def _unreadable_train_images(tmp_path):
  """The train class 'b' holds files that are not images: the first batch (all 8
  train examples) fails when decoded; listing them does not."""
  config = _run_config(tmp_path)
  for path in (tmp_path / 'data' / 'train' / 'b').iterdir():
    path.write_text('not an image')
  return config


def _mismatched_init_from(tmp_path):
  pretrained(tmp_path / 'pre', tiny_model(n_ctx=16))  # The run's n_ctx is 64.
  return _run_config(tmp_path, objective='finetune', palette='',
                     init_from=str(tmp_path / 'pre' / 'params.npz'))


def _init_from_without_palette(tmp_path):
  pretrained(tmp_path / 'pre', tiny_model(n_ctx=64, num_classes=2))
  (tmp_path / 'pre' / 'palette.npy').unlink()
  return _run_config(tmp_path, objective='finetune', palette='',
                     init_from=str(tmp_path / 'pre' / 'params.npz'))


REFUSED = {
    'objective': lambda tmp_path: _run_config(tmp_path, objective='gan'),
    'dtype': lambda tmp_path: _run_config(tmp_path, dtype='float64'),
    'init_from': _mismatched_init_from,
    'init_from palette': _init_from_without_palette,
    'first batch': _unreadable_train_images,
}


@pytest.mark.parametrize('name', sorted(REFUSED))
def test_a_refused_run_creates_nothing_in_a_fresh_workdir(tmp_path, name):
  config = REFUSED[name](tmp_path)
  with pytest.raises((UserInputError, FileNotFoundError)):
    train.train_and_evaluate(config, str(tmp_path / 'runs' / 'w'))
  assert not os.path.exists(tmp_path / 'runs')


# Each used to run nonsense (a negative lr ascends, bert_mask_prob=0 trains on no loss, a
# negative time limit stops at the first logging step, negative periods or eval_examples
# were taken for others) or fail naming something else (n_ctx, the loader's `batch`) or in
# a deep traceback (log_every=0: a division by zero after the workdir was written).
BAD_FIELDS = [
    ('total_steps', 0), ('total_steps', -1), ('batch_size', 0), ('batch_size', -8),
    ('batch_size', 7), ('lr', -1e-3), ('warmup_steps', -1), ('warmup_steps', 2),
    ('weight_decay', -0.1), ('b2', 1.0), ('grad_clip', -1.0), ('gen_loss_weight', -1.0),
    ('time_limit_minutes', -1.0), ('log_every', 0), ('eval_every', -1),
    ('checkpoint_every', -1), ('keep_checkpoints', 0), ('eval_examples', -1),
    ('image_size', 0), ('vocab_size', 0), ('palette_fit_images', 0),
    ('palette_fit_steps', 0), ('bert_mask_prob', 0.0), ('bert_mask_prob', 1.5),
    ('lr', float('nan'))]


@pytest.mark.parametrize('field,value', BAD_FIELDS)
def test_a_field_out_of_range_is_refused_by_name_before_the_workdir_is_made(
    tmp_path, field, value):
  objective = 'bert' if field == 'bert_mask_prob' else 'generative'
  config = _run_config(tmp_path, objective=objective, **{field: value})
  with pytest.raises(UserInputError) as info:
    train.train_and_evaluate(config, str(tmp_path / 'runs' / 'w'))
  message = str(info.value)
  assert message.startswith(f'{field}={value}') and '\n' not in message, message
  assert not os.path.exists(tmp_path / 'runs')


def test_a_refused_run_leaves_an_existing_workdir_as_it_was(tmp_path):
  workdir = tmp_path / 'w'
  os.makedirs(workdir / 'checkpoints')  # empty: e.g. left by an earlier version
  (workdir / 'notes.txt').write_text('mine')
  before = workdir_files.tree(workdir)
  with pytest.raises(UserInputError, match='not a readable image'):
    train.train_and_evaluate(_unreadable_train_images(tmp_path), str(workdir))
  assert workdir_files.tree(workdir) == before
  assert (workdir / 'notes.txt').read_text() == 'mine'


def test_skip_bad_images_drops_the_unreadable_files(tmp_path):
  """The error above says to set skip_bad_images; Image GPT's config has the field too."""
  config = _unreadable_train_images(tmp_path)
  config.skip_bad_images = True
  source = train._source(config, 'train')  # pylint: disable=protected-access
  assert len(source) == 4 and {source[i]['label'] for i in range(4)} == {0}


def test_a_finished_run_started_again_does_nothing_and_returns_its_result(
    tmp_path, capsys, monkeypatch):
  _, _, config = _grey_run_config(tmp_path)  # sample_grid on: samples.png is drawn.
  workdir = tmp_path / 'run'
  final = train.train_and_evaluate(config, str(workdir))
  assert (workdir / 'samples.png').exists()
  capsys.readouterr()
  before = workdir_files.snapshot(workdir)
  with monkeypatch.context() as patch:  # No duplicate work: not even the dataset is read.
    patch.setattr(train, '_source', lambda *a, **k: pytest.fail('dataset read again'))
    again = train.train_and_evaluate(config, str(workdir))
    out = capsys.readouterr().out
  assert again == json.loads(json.dumps(final))
  assert f'{workdir}: the run is already complete at step 2; its result is ' \
         f'{workdir / "final.json"}' in out
  assert json.loads(out[out.index('{'):]) == again  # final.json's result, printed.
  assert workdir_files.snapshot(workdir) == before  # Nothing rewritten, no row appended.
  # A raised total_steps continues the run, with one test evaluation at its new end.
  config.total_steps = 3
  longer = train.train_and_evaluate(config, str(workdir))
  assert longer['step'] == 3
  rows = metrics_log.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['step'] for r in rows if r['split'] == 'test'] == [0, 2, 3]
  assert json.loads((workdir / 'final.json').read_text())['step'] == 3


def test_a_resumed_run_does_not_read_init_from(tmp_path, capsys):
  """The checkpoint replaces the init_from weights: a resumed run continued without them
  (moved or deleted), and did not print their notes again. It used to load them first."""
  pretrained(tmp_path / 'pre', tiny_model(n_ctx=64, num_classes=3))
  # HF-style weights without a language-model head: the run says so once.
  with np.load(tmp_path / 'pre' / 'params.npz') as f:
    weights = dict(f)
  weights['wtet'] = np.zeros_like(weights['wtet'])
  np.savez(tmp_path / 'pre' / 'params.npz', **weights)
  config = _run_config(tmp_path, objective='finetune', palette='',
                       init_from=str(tmp_path / 'pre' / 'params.npz'))
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  out = capsys.readouterr().out
  assert 'no language-model head' in out and 'clf/wclf has 3 classes' in out
  for path in (tmp_path / 'pre').iterdir():  # Its palette too: the workdir keeps one.
    path.unlink()
  config.total_steps = 3
  resumed = train.train_and_evaluate(config, str(workdir))
  assert resumed['step'] == 3 and 0.0 <= resumed['test']['accuracy'] <= 1.0
  out = capsys.readouterr().out
  assert 'no language-model head' not in out and 'clf/wclf' not in out
  rows = metrics_log.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['step'] for r in rows if r['split'] == 'train'] == [1, 2, 3]


def test_a_resumed_run_keeps_its_palette_whatever_became_of_init_froms(tmp_path, monkeypatch):
  """A resumed run does not read init_from, but compared the palette beside it with the
  workdir's: one changed since (re-fitted, another run's) refused the resume."""
  pretrained(tmp_path / 'pre', tiny_model(n_ctx=64, num_classes=2))
  started_with = np.load(tmp_path / 'pre' / 'palette.npy')
  config = _run_config(tmp_path, objective='finetune', palette='',
                       init_from=str(tmp_path / 'pre' / 'params.npz'))
  workdir = tmp_path / 'run'
  train.train_and_evaluate(config, str(workdir))
  used = []
  choose = run_palette.choose_palette
  monkeypatch.setattr(run_palette, 'choose_palette',
                      lambda *a, **k: used.append(choose(*a, **k)) or used[-1])
  np.save(tmp_path / 'pre' / 'palette.npy', started_with[::-1].copy())  # changed
  for total_steps, change in ((3, None), (4, 'delete')):
    if change:
      (tmp_path / 'pre' / 'palette.npy').unlink()
    config.total_steps = total_steps
    assert train.train_and_evaluate(config, str(workdir))['step'] == total_steps
    np.testing.assert_array_equal(used[-1][0], started_with)
    assert not used[-1][1]  # not new: the workdir's
    np.testing.assert_array_equal(np.load(workdir / 'palette.npy'), started_with)
  # Without the workdir's palette a resume cannot know the colours its checkpoints learned
  # (a palette fitted now would differ), and init_from's is no longer read.
  (workdir / 'palette.npy').unlink()
  np.save(tmp_path / 'pre' / 'palette.npy', started_with)
  config.total_steps = 5
  with pytest.raises(UserInputError, match=r'palette\.npy: missing, and a resumed run does '
                     r'not read init_from; pass the palette'):
    train.train_and_evaluate(config, str(workdir))


def test_a_run_stopped_before_final_json_evaluates_its_last_step(tmp_path):
  """Stopped after its last checkpoint, before final.json (or with an older one): the run
  again trains no step, and returned no test metrics, or the older file's labelled with
  the new step. It now evaluates the test split at that step, as vit does, once in
  metrics.jsonl, and keeps the initial evaluation (final.json's, else metrics.jsonl's)."""
  config = _run_config(tmp_path)
  workdir = tmp_path / 'run'
  first = json.loads(json.dumps(train.train_and_evaluate(config, str(workdir))))
  (workdir / 'final.json').unlink()
  again = json.loads(json.dumps(train.train_and_evaluate(config, str(workdir))))
  # Its initial evaluation too, from metrics.jsonl's step-0 test row: it used to be lost.
  assert again == first and 'initial_test' in again
  assert json.loads((workdir / 'final.json').read_text()) == again
  # final.json without it (unreadable: written again) is the same.
  (workdir / 'final.json').write_text('{"step": 1, "test": ')
  assert json.loads(json.dumps(train.train_and_evaluate(config, str(workdir)))) == first
  # An older step's final.json: its initial evaluation is kept, its test metrics are not.
  (workdir / 'final.json').write_text(json.dumps(
      {'step': 1, 'initial_test': first['initial_test'], 'test': {'bits_per_dim': 99.0}}))
  again = json.loads(json.dumps(train.train_and_evaluate(config, str(workdir))))
  assert again == {**first, 'step': 2}
  assert json.loads((workdir / 'final.json').read_text()) == again
  rows = metrics_log.read_jsonl(workdir / 'metrics.jsonl')
  assert [r['step'] for r in rows if r['split'] == 'test'] == [0, 2]
  assert [r['step'] for r in rows if r['split'] == 'train'] == [1, 2]


def test_a_head_never_trained_draws_no_samples_png(tmp_path, capsys):
  """Fine-tuned from weights without a language-model head with gen_loss_weight=0, wtet
  stays zero: samples.png would be uniform noise, and sampling refuses such params."""
  pretrained(tmp_path / 'pre', tiny_model(n_ctx=64, num_classes=2))
  with np.load(tmp_path / 'pre' / 'params.npz') as f:
    weights = {**dict(f), 'wtet': np.zeros_like(f['wtet'])}
  np.savez(tmp_path / 'pre' / 'params.npz', **weights)
  config = _run_config(tmp_path, objective='finetune', palette='', gen_loss_weight=0.0,
                       sample_grid=True, init_from=str(tmp_path / 'pre' / 'params.npz'))
  result = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert result['step'] == 2 and (tmp_path / 'run' / 'params.npz').exists()
  assert not (tmp_path / 'run' / 'samples.png').exists()
  assert 'samples.png not written: the language-model head wtet is still all zero' in \
      capsys.readouterr().out
