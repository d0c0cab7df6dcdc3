"""`igpt_jax.hf_export`: HF transformers' own ImageGPT classes, from the folder it writes, give
our logits and class logits; importing the folder gives back our parameters."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igpt_jax import checkpoint, hf_export
from tests.test_igpt_model import random_params, tiny_model
from vision_core.errors import UserInputError

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')


def test_hf_gives_our_logits_and_import_gives_our_params(tmp_path, capsys):
  model = tiny_model(num_classes=3)
  params = random_params(model, seed=4)
  checkpoint.save(tmp_path / 'params.npz', params)
  hf_export.main(['--params', str(tmp_path / 'params.npz'), '--out', str(tmp_path / 'hf')])
  assert 'from_pretrained' in capsys.readouterr().err
  assert sorted(os.listdir(tmp_path / 'hf')) == sorted(hf_export.EXPORT_FILES)
  tokens = np.random.default_rng(0).integers(0, 512, (2, 16))
  ours = model.apply({'params': params}, jnp.asarray(tokens))
  inputs = torch.as_tensor(np.concatenate([np.full((2, 1), 512), tokens[:, :-1]], axis=1))
  causal = transformers.ImageGPTForCausalImageModeling.from_pretrained(tmp_path / 'hf').eval()
  with torch.no_grad():
    logits = causal(inputs).logits.numpy()
  np.testing.assert_allclose(ours['logits'], logits, rtol=1e-4, atol=1e-4)
  classifier = transformers.ImageGPTForImageClassification.from_pretrained(tmp_path / 'hf')
  with torch.no_grad():  # HF's head: the sequence mean of the ln_f output, then `score`
    clf_logits = classifier.eval()(inputs).logits.numpy()
  np.testing.assert_allclose(ours['clf_logits'], clf_logits, rtol=1e-4, atol=1e-4)
  back, back_model = checkpoint.load(tmp_path / 'hf')
  assert back_model == model
  jax.tree.map(np.testing.assert_array_equal, back, params)


def test_refusals_are_named(tmp_path, capsys):
  with pytest.raises(UserInputError, match='BERT-objective Image GPT .* no HF counterpart'):
    hf_export.hf_config(tiny_model(bert=True))
  model = tiny_model()
  checkpoint.save(tmp_path / 'params.npz', random_params(model))
  (tmp_path / 'hf').mkdir()
  (tmp_path / 'hf' / 'notes.txt').write_text('mine')
  with pytest.raises(SystemExit):
    hf_export.main(['--params', str(tmp_path / 'params.npz'), '--out', str(tmp_path / 'hf'),
                    '--force'])
  assert 'not an HF export of this tool (it holds notes.txt)' in capsys.readouterr().err
  assert os.listdir(tmp_path / 'hf') == ['notes.txt']
  with pytest.raises(SystemExit):  # The weights are read before anything is written.
    hf_export.main(['--params', str(tmp_path / 'nope.npz'), '--out', str(tmp_path / 'new')])
  assert 'nope.npz' in capsys.readouterr().err and not os.path.exists(tmp_path / 'new')
