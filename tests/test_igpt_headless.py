"""HF saves without the LM head (ImageGPTModel, ImageGPTForImageClassification): the probe and
fine-tuning load them, with HF's own features and class logits; the jobs that need the
head refuse them in one line naming the file."""

import numpy as np
import pytest

from igpt_jax import checkpoint, complete, probe, sample, train
from tests.test_igpt_train import tiny_config
from vision_core.errors import UserInputError

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


def save_hf(directory, kind):
  """A random HF model of `kind` (sizes of configs/igpt.py's 'testing', 4x4 images), saved
  by HF; returns it (eval mode)."""
  config = transformers.ImageGPTConfig(n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                       vocab_size=513, num_labels=3)
  torch.manual_seed(0)
  cls = {'model': transformers.ImageGPTModel,
         'classification': transformers.ImageGPTForImageClassification}[kind]
  hf = cls(config).eval()
  with torch.no_grad():  # HF initialises norms to one and biases to zero: random instead.
    for name, p in hf.named_parameters():
      p.copy_(torch.zeros_like(p) if name.endswith('.bias') else torch.randn_like(p) * 0.3
              + (1.0 if 'ln_' in name else 0.0))
  hf.save_pretrained(directory, safe_serialization=True)
  return hf


def hf_probe_features(hf, tokens):
  """HF's forward pass -> the probe's features `[L + 1, B, D]`: the sequence mean of each
  block's `ln_1` output (HF's own module on HF's hidden state), then of the `ln_f` output."""
  body = getattr(hf, 'transformer', hf)
  inputs = np.concatenate([np.full((len(tokens), 1), 512), tokens[:, :-1]], axis=1)  # sos.
  with torch.no_grad():
    out = hf(torch.as_tensor(inputs), output_hidden_states=True)
    states = out.hidden_states  # Block inputs, then the ln_f output.
    feats = [block.ln_1(h).mean(1) for block, h in zip(body.h, states)] + [states[-1].mean(1)]
  return np.stack([f.numpy() for f in feats]), out


@pytest.mark.parametrize('kind', ['model', 'classification'])
def test_headless_hf_saves_load_with_hfs_features(tmp_path, kind):
  hf = save_hf(tmp_path / 'hf', kind)
  source = str(tmp_path / 'hf' / 'model.safetensors')
  with pytest.raises(UserInputError, match=f'^{source}: has no language-model head') as e:
    checkpoint.load(tmp_path / 'hf')  # By default: the jobs that read the logits.
  assert '\n' not in str(e.value)
  params, model = checkpoint.load(tmp_path / 'hf', need_lm_head=False)
  assert (model.width, model.num_heads, model.num_layers, model.n_ctx) == (32, 4, 2, 16)
  assert not np.any(params['wtet'])
  tokens = np.random.default_rng(0).integers(0, 512, (3, 16))
  expected, out = hf_probe_features(hf, tokens)
  ours = probe.extract_features(model, params, tokens)
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
  if kind == 'classification':  # HF's score head is our clf head: the same class logits.
    assert model.num_classes == 3
    logits = model.apply({'params': params}, tokens)['clf_logits']
    np.testing.assert_allclose(logits, out.logits.numpy(), rtol=1e-4, atol=1e-4)
  else:
    assert model.num_classes == 0


def test_jobs_that_need_the_head_refuse_in_one_line(tmp_path, capsys):
  save_hf(tmp_path / 'hf', 'model')
  source = str(tmp_path / 'hf' / 'model.safetensors')
  np.save(tmp_path / 'palette.npy',
          np.random.default_rng(1).uniform(-1, 1, (512, 3)).astype(np.float32))
  capsys.readouterr()  # HF's progress bars.
  with pytest.raises(SystemExit) as e:  # Sampling.
    complete.main(['--params', str(tmp_path / 'hf'), '--palette', str(tmp_path / 'palette.npy'),
                   '--unconditional', '1', '--out', str(tmp_path / 'samples.png')])
  err = capsys.readouterr().err
  assert e.value.code == 2 and err.count('\n') == 1
  assert err.startswith(f'igpt_jax.complete: error: {source}: has no language-model head')
  assert not (tmp_path / 'samples.png').exists()
  # Training: generative from these weights is refused; fine-tuning starts a zero head.
  config = tiny_config(tmp_path, image_size=4, init_from=str(tmp_path / 'hf'))
  model = train.build_model(config)
  with pytest.raises(UserInputError, match='has no language-model head'):
    train.initial_params(config, model, train.jax.random.PRNGKey(0))
  config = tiny_config(tmp_path, image_size=4, init_from=str(tmp_path / 'hf'),
                       objective='finetune')
  model = train.build_model(config, num_classes=3)
  params = train.initial_params(config, model, train.jax.random.PRNGKey(0))
  loaded, _ = checkpoint.load(tmp_path / 'hf', need_lm_head=False)
  np.testing.assert_array_equal(params['h1']['attn']['q_proj'], loaded['h1']['attn']['q_proj'])
  assert not np.any(params['wtet']) and not np.any(params['clf']['wclf'])
  assert 'no language-model head; it starts from zero' in capsys.readouterr().out


def test_the_probe_command_runs_on_an_imagegptmodel_save(tmp_path):
  from tests.test_igpt_probe import _probe_cli_inputs  # pylint: disable=g-import-not-at-top
  args = _probe_cli_inputs(tmp_path)
  save_hf(tmp_path / 'hf', 'model')
  args[args.index('--params') + 1] = str(tmp_path / 'hf')
  probe.main(args + ['--layers', '1'])
  assert '| 1 | block 1 ln_1 |' in (tmp_path / 'out' / 'probe.md').read_text()


def test_sampling_warns_for_weights_loaded_without_the_head(tmp_path):
  """What the probe and fine-tuning load (a zero wtet) used to complete images as noise
  without a word."""
  save_hf(tmp_path / 'hf', 'model')
  params, model = checkpoint.load(tmp_path / 'hf', need_lm_head=False)
  with pytest.warns(UserWarning, match='language-model head wtet is all zero'):
    sample.complete(model, params, train.jax.random.PRNGKey(0), np.zeros((1, 16), np.int32),
                    image_shape=(4, 4), keep_rows=2)
