"""Malformed Image GPT weight files: one-line `UserInputError`s naming the file and key.

Files are written as tests/test_igpt_checkpoint.py writes them (`write_bundle`, `write_hf`).
"""

import numpy as np
import pytest
from safetensors import numpy as st_numpy

from igpt_jax import checkpoint
from tests.test_igpt_checkpoint import write_bundle, write_hf
from tests.test_igpt_model import random_params, tiny_model
from vision_core import npz
from vision_core.errors import UserInputError


@pytest.fixture(name='flat')
def fixture_flat():
  return npz.flatten(random_params(tiny_model()))


@pytest.mark.parametrize('file_format', ['npz', 'tf'])
@pytest.mark.parametrize('key, value, expected', [
    ('wte', np.zeros(8, np.float32), r'wte has shape \(8,\), expected \[vocab, D\]'),
    ('wpe', np.zeros((), np.float32), r'wpe has shape \((1,)?\), expected \[n_ctx, D\]'),
    ('h0/attn/q_proj', np.zeros((), np.float32),
     r'h0/attn/q_proj has shape \((1,)?\), expected \[H, D/H, D\]'),
    ('h0/attn/q_proj', np.zeros((0, 8, 32), np.float32),
     r'h0/attn/q_proj has shape \(0, 8, 32\), expected \[H, D/H, D\] with at least one head'),
], ids=['wte-1d', 'wpe-scalar', 'q_proj-scalar', 'q_proj-no-heads'])
def test_size_variables_of_the_wrong_rank_are_named(tmp_path, flat, file_format, key, value,
                                                    expected):
  """These crashed with `IndexError: tuple index out of range` in `model_from_params`.
  (The test's TF writer stores a scalar as shape (1,).)"""
  bad = {**flat, key: value}
  if file_format == 'npz':
    path = tmp_path / 'params.npz'
    npz.save_flat(path, bad)
  else:
    path = tmp_path / 'model.ckpt-1'
    write_bundle(path, {'model/' + k: np.asarray(v) for k, v in bad.items()})
  with pytest.raises(UserInputError, match=expected) as e:
    checkpoint.load(path)
  assert path.name in str(e.value)


def test_hf_attention_weight_of_the_wrong_rank_is_named(tmp_path, flat):
  """A 1-D `c_attn.weight` crashed with `IndexError` in `hf_to_flat`."""
  write_hf(tmp_path / 'hf', flat, num_heads=4)
  weights = tmp_path / 'hf' / 'model.safetensors'
  state = st_numpy.load_file(str(weights))
  state['transformer.h.0.attn.c_attn.weight'] = np.zeros(96, np.float32)
  st_numpy.save_file(state, str(weights))
  with pytest.raises(UserInputError, match=r'model\.safetensors: not a loadable ImageGPT .*\n'
                     r'.*h\.0\.attn\.c_attn\.weight: expected \[D, 3D\] .* found \(96,\)'):
    checkpoint.load(tmp_path / 'hf')
