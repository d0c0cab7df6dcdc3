"""Malformed Image GPT weight files: one-line `UserInputError`s naming the file and key.

Files are written as tests/test_igpt_checkpoint.py writes them (`write_bundle`, `write_hf`).
"""

import json

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


@pytest.mark.parametrize('config, expected', [
    ([1, 2], r'config\.json: expected a JSON object \(HF\'s ImageGPTConfig.*\), found an array'),
    ('n_head="2"', r'config\.json: n_head must be a positive integer, found \'2\''),
    ('n_head=0', r'config\.json: n_head must be a positive integer, found 0'),
    ('n_layer=true', r'config\.json: n_layer must be a positive integer, found True'),
    ('n_embd=32.0', r'config\.json: n_embd must be a positive integer, found 32\.0'),
    ('vocab_size=null', r'config\.json: vocab_size must be a positive integer, found None'),
], ids=['list', 'n_head-string', 'n_head-zero', 'n_layer-bool', 'n_embd-float', 'vocab-null'])
def test_malformed_hf_configs_are_named(tmp_path, flat, config, expected):
  """A list crashed with AttributeError (`.get`), a string n_head with TypeError."""
  write_hf(tmp_path / 'hf', flat, num_heads=4)
  config_path = tmp_path / 'hf' / 'config.json'
  if isinstance(config, str):
    key, value = config.split('=')
    config = {**json.loads(config_path.read_text()), key: json.loads(value)}
  config_path.write_text(json.dumps(config))
  with pytest.raises(UserInputError, match=expected):
    checkpoint.load(tmp_path / 'hf')


@pytest.mark.parametrize('index, expected', [
    ([1], r'index\.json: expected a JSON object \(a sharded save\'s index\), found an array'),
    ({'weight_map': {'lm_head.weight': 3}},
     r'index\.json: "weight_map" values must be names of shard files beside it, found '
     r"'lm_head\.weight': 3"),
    # Was read: a downloaded index could point anywhere.
    ({'weight_map': {'lm_head.weight': '../hf/model-1-of-1.safetensors'}},
     r"beside it, found 'lm_head\.weight': '\.\./hf/model-1-of-1\.safetensors'"),
    ({'weight_map': []}, r'index\.json: expected a "weight_map" of tensor names to shard files'),
], ids=['list', 'shard-number', 'shard-path', 'map-list'])
def test_malformed_shard_indexes_are_named(tmp_path, flat, index, expected):
  """A list crashed with AttributeError, a number for a shard with TypeError."""
  write_hf(tmp_path / 'hf', flat, num_heads=4)
  (tmp_path / 'hf' / 'model.safetensors').rename(tmp_path / 'hf' / 'model-1-of-1.safetensors')
  index_path = tmp_path / 'hf' / checkpoint.HF_SHARD_INDEX
  index_path.write_text(json.dumps(index))
  with pytest.raises(UserInputError, match=expected):
    checkpoint.load(tmp_path / 'hf')
  # The same save with a well-formed index loads.
  state = st_numpy.load_file(str(tmp_path / 'hf' / 'model-1-of-1.safetensors'))
  index_path.write_text(json.dumps({'weight_map': {k: 'model-1-of-1.safetensors'
                                                   for k in state}}))
  checkpoint.load(tmp_path / 'hf')


@pytest.mark.parametrize('field, value, expected', [
    ('n_layer', 7, 'n_layer=7 but the weights hold 2 layers'),
    ('n_embd', 64, 'n_embd=64 but the weights are 32 wide'),
    ('vocab_size', 257, 'vocab_size=257 but wte.weight has 513 rows'),
    ('n_positions', 8, 'n_positions=8 but wpe.weight has 16 rows'),
])
def test_hf_config_sizes_must_match_the_weights(tmp_path, flat, field, value, expected):
  """A config.json saying 7 layers beside weights of 2 loaded as if all were well."""
  write_hf(tmp_path / 'hf', flat, num_heads=4)
  config_path = tmp_path / 'hf' / 'config.json'
  config = json.loads(config_path.read_text())
  assert (config['n_layer'], config['n_embd'], config['vocab_size'], config['n_positions']) == (
      2, 32, 513, 16)  # What write_hf wrote, from the weights: these load.
  checkpoint.load(tmp_path / 'hf')
  config_path.write_text(json.dumps({**config, field: value}))
  with pytest.raises(UserInputError) as e:
    checkpoint.load(tmp_path / 'hf')
  assert str(e.value) == (f'{config_path} does not describe the weights in '
                          f'{tmp_path / "hf" / "model.safetensors"}: {expected}.')


def test_a_flipped_bit_in_a_tf_data_shard_is_caught_by_default(tmp_path, flat):
  """TensorFlow checks each tensor's crc32c; this reader did so only when asked, so a damaged
  download loaded silently, with one wrong weight."""
  arrays = {'model/' + k: np.asarray(v) for k, v in flat.items()}
  write_bundle(tmp_path / 'model.ckpt-1', arrays, num_shards=2)
  first = sorted(arrays)[0]  # write_bundle puts it at the start of shard 0.
  shard = tmp_path / 'model.ckpt-1.data-00000-of-00002'
  data = bytearray(shard.read_bytes())
  data[5] ^= 0x10
  shard.write_bytes(bytes(data))
  with pytest.raises(UserInputError) as e:
    checkpoint.load(tmp_path / 'model.ckpt-1')
  assert str(e.value).startswith(f'{shard}: tensor {first!r} fails its crc32c checksum')
  # The opt-out reads the damaged bytes as they are.
  params, _ = checkpoint.load_openai_tf(tmp_path / 'model.ckpt-1', verify_checksums=False)
  damaged = npz.flatten(params)[first[len('model/'):]]
  assert np.sum(damaged != flat[first[len('model/'):]]) == 1
