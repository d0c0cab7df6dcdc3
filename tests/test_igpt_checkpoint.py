"""Checkpoint import: a real TF-written bundle, OpenAI and HF layouts of the same weights."""

import json
import pathlib
import struct
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from safetensors import numpy as st_numpy

from igpt_jax import checkpoint, tf_bundle
from tests.test_igpt_model import numpy_forward, random_params, tiny_model
from vision_core import npz
from vision_core.errors import UserInputError

FIXTURE = pathlib.Path(__file__).parent / 'data' / 'igpt_tf'
sys.path.insert(0, str(FIXTURE))
from make_fixture import fixture_value, variable_shapes  # pylint: disable=g-import-not-at-top,wrong-import-position


# --- A TF tensor-bundle writer, from the format's description (LevelDB table + protos). ---

def varint(n):
  out = bytearray()
  while True:
    out.append((n & 0x7f) | (0x80 if n > 0x7f else 0))
    n >>= 7
    if not n:
      return bytes(out)


def field(number, value):
  """One protobuf field: ints as varints, bytes as length-delimited."""
  if isinstance(value, bytes):
    return varint(number << 3 | 2) + varint(len(value)) + value
  return varint(number << 3) + varint(value)


def encode_block(items, restart_interval):
  out, restarts, prev = bytearray(), [], b''
  for i, (key, value) in enumerate(items):
    shared = 0
    if i % restart_interval == 0:
      restarts.append(len(out))
    else:
      while shared < min(len(key), len(prev)) and key[shared] == prev[shared]:
        shared += 1
    out += varint(shared) + varint(len(key) - shared) + varint(len(value))
    out += key[shared:] + value
    prev = key
  restarts = restarts or [0]
  return bytes(out) + b''.join(struct.pack('<I', r) for r in restarts) + struct.pack(
      '<I', len(restarts))


def write_table(path, items, *, per_block=3, restart_interval=2):
  data, index = bytearray(), []
  def add_block(block):
    handle = varint(len(data)) + varint(len(block))
    data.extend(block + b'\0' + struct.pack(
        '<I', tf_bundle.mask_crc(tf_bundle.crc32c(block + b'\0'))))
    return handle
  items = sorted(items)
  for i in range(0, len(items), per_block):
    chunk = items[i:i + per_block]
    index.append((chunk[-1][0], add_block(encode_block(chunk, restart_interval))))
  meta = add_block(encode_block([], 1))
  index_handle = add_block(encode_block(index, 1))
  footer = (meta + index_handle).ljust(40, b'\0') + struct.pack('<Q', tf_bundle.TABLE_MAGIC)
  pathlib.Path(path).write_bytes(bytes(data) + footer)


def write_bundle(prefix, arrays, *, num_shards=3):
  """Writes `{name: array}` as a TF V2 checkpoint with tensors spread over the shards."""
  dtypes = {np.dtype(np.float32): 1, np.dtype(np.int64): 9}
  shards = [bytearray() for _ in range(num_shards)]
  items = [(b'', field(1, num_shards) + field(3, field(1, 1)))]
  for i, (name, value) in enumerate(sorted(arrays.items())):
    value = np.ascontiguousarray(value)
    raw, shard = value.astype(value.dtype.newbyteorder('<')).tobytes(), i % num_shards
    shape = b''.join(field(2, field(1, n)) for n in value.shape)
    entry = (field(1, dtypes[value.dtype]) + field(2, shape) + field(3, shard)
             + field(4, len(shards[shard])) + field(5, len(raw))
             + varint(6 << 3 | 5) + struct.pack('<I', tf_bundle.mask_crc(tf_bundle.crc32c(raw))))
    shards[shard] += raw
    items.append((name.encode(), entry))
  write_table(f'{prefix}.index', items)
  for k, raw in enumerate(shards):
    pathlib.Path(f'{prefix}.data-{k:05d}-of-{num_shards:05d}').write_bytes(bytes(raw))


def write_hf(directory, flat, *, num_heads, prefix='transformer.'):
  """Writes flat OpenAI-layout weights in HF ImageGPT's layout (safetensors + config.json)."""
  d = flat['wte'].shape[1]
  layers = len({k.split('/')[0] for k in flat if k.startswith('h')})
  state = {prefix + 'wte.weight': np.concatenate([flat['wte'], flat['sos'][None]]),
           prefix + 'wpe.weight': flat['wpe'], prefix + 'ln_f.weight': flat['ln_f/g'],
           'lm_head.weight': flat['wtet']}
  if 'clf/wclf' in flat:
    state['score.weight'] = flat['clf/wclf']
  for i in range(layers):
    p, h = f'h{i}/', f'{prefix}h.{i}.'
    # Conv1D weights are [in, out]; q/k/v out index = head * (D/H) + e.
    qkv = [flat[p + f'attn/{n}_proj'].reshape(d, d).T for n in 'qkv']
    state.update({
        h + 'ln_1.weight': flat[p + 'ln_1/g'], h + 'ln_2.weight': flat[p + 'ln_2/g'],
        h + 'attn.c_attn.weight': np.concatenate(qkv, axis=1),
        h + 'attn.c_attn.bias': np.zeros(3 * d, np.float32),
        h + 'attn.c_proj.weight': flat[p + 'attn/c_proj'].reshape(d, d),
        h + 'attn.c_proj.bias': np.zeros(d, np.float32),
        h + 'attn.bias': np.tril(np.ones((1, 1, 16, 16), bool)),
        h + 'mlp.c_fc.weight': flat[p + 'mlp/c_fc/w'],
        h + 'mlp.c_fc.bias': np.zeros(4 * d, np.float32),
        h + 'mlp.c_proj.weight': flat[p + 'mlp/c_proj/w'],
        h + 'mlp.c_proj.bias': np.zeros(d, np.float32)})
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  st_numpy.save_file({k: np.ascontiguousarray(v) for k, v in state.items()},
                     str(directory / 'model.safetensors'))
  (directory / 'config.json').write_text(json.dumps(dict(
      n_embd=d, n_head=num_heads, n_layer=layers, vocab_size=flat['wte'].shape[0] + 1,
      n_positions=flat['wpe'].shape[0])))


def test_crc32c_known_value():
  assert tf_bundle.crc32c(b'123456789') == 0xe3069283  # The CRC-32C check value.


def test_reads_a_checkpoint_written_by_tensorflow():
  arrays = tf_bundle.read_bundle(FIXTURE, verify_checksums=True)  # Two shards.
  assert len(arrays) == 3 * len(variable_shapes()) + 1
  assert arrays['global_step'].dtype == np.int64 and arrays['global_step'] == 7
  for name, value in arrays.items():
    if name != 'global_step':
      np.testing.assert_array_equal(value, fixture_value(name, value.shape), err_msg=name)
  params, model = checkpoint.load_openai_tf(FIXTURE / 'model.ckpt-7.index')
  assert (model.width, model.num_heads, model.num_layers, model.vocab_size, model.n_ctx) == (
      8, 2, 2, 16, 4)
  flat = npz.flatten(params)
  assert sorted(flat) == sorted(k[len('model/'):] for k in variable_shapes())
  np.testing.assert_array_equal(flat['h1/attn/v_proj'],
                                fixture_value('model/h1/attn/v_proj', (2, 4, 8)))


def test_openai_and_hf_layouts_load_to_identical_params_and_logits(tmp_path):
  model = tiny_model(num_classes=5)
  flat = npz.flatten(random_params(model, seed=3))
  tf_arrays = {'model/' + k: v for k, v in flat.items()}
  tf_arrays.update({f'model/{k}/Adam': v + 1 for k, v in flat.items()})
  tf_arrays['global_step'] = np.array(1000, np.int64)
  (tmp_path / 'tf').mkdir()
  write_bundle(tmp_path / 'tf' / 'model.ckpt-1000', tf_arrays)
  write_hf(tmp_path / 'hf', flat, num_heads=model.num_heads)

  tf_params, tf_model = checkpoint.load(tmp_path / 'tf' / 'model.ckpt-1000')
  hf_params, hf_model = checkpoint.load(tmp_path / 'hf')
  assert tf_model == hf_model == model
  for key, value in npz.flatten(tf_params).items():
    np.testing.assert_array_equal(value, flat[key], err_msg=key)
    np.testing.assert_array_equal(npz.flatten(hf_params)[key], value, err_msg=key)

  tokens = np.random.default_rng(5).integers(0, 512, (2, 16))
  tf_out = model.apply({'params': tf_params}, jnp.asarray(tokens))
  hf_out = model.apply({'params': hf_params}, jnp.asarray(tokens))
  np.testing.assert_array_equal(tf_out['logits'], hf_out['logits'])
  np.testing.assert_array_equal(tf_out['clf_logits'], hf_out['clf_logits'])
  reference, _, _ = numpy_forward(flat, tokens, n_head=model.num_heads)
  np.testing.assert_allclose(tf_out['logits'], reference, rtol=2e-4, atol=2e-4)


def test_npz_round_trip_and_no_overwrite(tmp_path):
  model = tiny_model()
  params = random_params(model)
  checkpoint.save(tmp_path / 'p.npz', params)
  loaded, loaded_model = checkpoint.load(tmp_path / 'p.npz')
  assert loaded_model == model
  for k, v in npz.flatten(params).items():
    np.testing.assert_array_equal(npz.flatten(loaded)[k], v)
  with pytest.raises(UserInputError, match='refusing to overwrite'):
    checkpoint.save(tmp_path / 'p.npz', params)
  # A training workdir (params.npz beside checkpoints/) stands for its params.npz.
  (tmp_path / 'run' / 'checkpoints').mkdir(parents=True)
  checkpoint.save(tmp_path / 'run' / 'params.npz', params)
  from_workdir, _ = checkpoint.load(tmp_path / 'run')
  for k, v in npz.flatten(params).items():
    np.testing.assert_array_equal(npz.flatten(from_workdir)[k], v)


def test_missing_and_misshaped_variables_are_listed(tmp_path):
  model = tiny_model()
  flat = {'model/' + k: v for k, v in npz.flatten(random_params(model)).items()}
  del flat['model/h1/mlp/c_fc/w']
  flat['model/h0/attn/k_proj'] = flat['model/h0/attn/k_proj'][:, :4]
  write_bundle(tmp_path / 'ckpt', flat)
  with pytest.raises(UserInputError) as e:
    checkpoint.load_openai_tf(tmp_path / 'ckpt')
  message = str(e.value)
  assert 'ckpt.index' in message and '2 mismatched keys' in message
  assert 'missing  h1/mlp/c_fc/w: expected shape (32, 128)' in message
  assert 'shape    h0/attn/k_proj: expected (4, 8, 32), found (4, 4, 32)' in message
  # Against a given model, too.
  with pytest.raises(UserInputError, match='missing  h1/mlp/c_fc/w'):
    checkpoint.load_openai_tf(tmp_path / 'ckpt', model=model)


def test_bad_files_are_clear_errors(tmp_path):
  model = tiny_model()
  flat = npz.flatten(random_params(model))
  write_bundle(tmp_path / 'ckpt', {'model/' + k: v for k, v in flat.items()}, num_shards=2)
  (tmp_path / 'ckpt.data-00001-of-00002').unlink()
  with pytest.raises(FileNotFoundError, match='ckpt.data-00001-of-00002: missing data shard 1'):
    checkpoint.load_openai_tf(tmp_path / 'ckpt')
  index = bytearray((tmp_path / 'ckpt.index').read_bytes())
  index[20] ^= 0xff
  (tmp_path / 'bad.index').write_bytes(bytes(index))
  with pytest.raises(UserInputError, match='bad.index: corrupt'):
    tf_bundle.read_bundle(tmp_path / 'bad')
  (tmp_path / 'junk.index').write_bytes(b'x' * 100)
  with pytest.raises(UserInputError, match='not a TensorFlow checkpoint index'):
    tf_bundle.read_bundle(tmp_path / 'junk.index')
  with pytest.raises(FileNotFoundError, match='nothere.index'):
    checkpoint.load_openai_tf(tmp_path / 'nothere')

  hf = dict(flat)
  write_hf(tmp_path / 'hf', hf, num_heads=4)
  state = st_numpy.load_file(str(tmp_path / 'hf' / 'model.safetensors'))
  state['transformer.h.0.mlp.c_fc.bias'][3] = 0.5
  del state['lm_head.weight']
  st_numpy.save_file(state, str(tmp_path / 'hf' / 'model.safetensors'))
  with pytest.raises(UserInputError, match='nonzero, but Image GPT has no biases'):
    checkpoint.load_hf(tmp_path / 'hf')
  state['transformer.h.0.mlp.c_fc.bias'][3] = 0.0
  st_numpy.save_file(state, str(tmp_path / 'hf' / 'model.safetensors'))
  with pytest.raises(UserInputError, match='model.safetensors: has no language-model head'):
    checkpoint.load_hf(tmp_path / 'hf')  # tests/test_igpt_headless.py: where it loads.
  del state['transformer.ln_f.weight']  # Other problems too: those are listed.
  st_numpy.save_file(state, str(tmp_path / 'hf' / 'model.safetensors'))
  with pytest.raises(UserInputError, match=r'missing  ln_f/g: expected shape \(32,\)'):
    checkpoint.load_hf(tmp_path / 'hf')
  (tmp_path / 'hf' / 'config.json').unlink()
  with pytest.raises(UserInputError, match='number of heads'):
    checkpoint.load_hf(tmp_path / 'hf' / 'model.safetensors')


@pytest.mark.parametrize('field, value', [('scale_attn_by_inverse_layer_idx', True),
                                          ('scale_attn_weights', False),
                                          ('layer_norm_epsilon', 1e-6),
                                          ('activation_function', 'gelu')])
def test_hf_configs_with_another_forward_pass_are_refused(tmp_path, field, value):
  """Each of these ImageGPTConfig fields changes HF's logits (the attention scale per layer
  or at all, the norm's epsilon, the MLP activation); such weights loaded silently and gave
  other logits here."""
  write_hf(tmp_path / 'hf', npz.flatten(random_params(tiny_model())), num_heads=4)
  config_path = tmp_path / 'hf' / 'config.json'
  config = json.loads(config_path.read_text())
  config.update(activation_function='quick_gelu', layer_norm_epsilon=1e-5)  # HF's defaults.
  config_path.write_text(json.dumps(config))
  checkpoint.load(tmp_path / 'hf')
  config_path.write_text(json.dumps({**config, field: value}))
  with pytest.raises(UserInputError, match=rf'config.json: {field}={value!r} \(expected'):
    checkpoint.load(tmp_path / 'hf')


def test_optimizer_state_names():
  for name in ('global_step', 'model/h0/attn/q_proj/Adam', 'model/wte/adam_v',
               'model/h3/mlp/c_fc/w/Adam_1'):
    assert checkpoint.is_optimizer_state(name)
  for name in ('model/wte', 'model/h0/attn/q_proj', 'model/clf/wclf'):
    assert not checkpoint.is_optimizer_state(name)


def _save_hf_bin(hf, directory, sharded: bool) -> None:
  """HF's older layout: `pytorch_model.bin` (torch.save of the state dict), or its shards listed
  by `pytorch_model.bin.index.json` (what hub repos such as openai/imagegpt-small hold)."""
  import torch  # pylint: disable=g-import-not-at-top
  directory.mkdir()
  hf.config.save_pretrained(directory)
  state = {k: v.contiguous() for k, v in hf.state_dict().items()}
  if not sharded:
    torch.save(state, directory / 'pytorch_model.bin')
    return
  names = sorted(state)
  parts = [names[:len(names) // 2], names[len(names) // 2:]]
  weight_map = {}
  for i, part in enumerate(parts):
    file = f'pytorch_model-{i + 1:05d}-of-00002.bin'
    torch.save({k: state[k] for k in part}, directory / file)
    weight_map.update({k: file for k in part})
  (directory / 'pytorch_model.bin.index.json').write_text(json.dumps(
      {'metadata': {}, 'weight_map': weight_map}))


@pytest.mark.parametrize('layout,shard_size', [('safetensors', None), ('safetensors', '20KB'),
                                               ('bin', None), ('bin', 'sharded')])
def test_logits_equal_hf_transformers_pytorch_imagegpt(tmp_path, layout, shard_size):
  """HF's own PyTorch ImageGPT, saved by HF, loads here and gives the same logits; also when
  save_pretrained splits it into shards (it does so for imagegpt-large in float32), and from
  the `pytorch_model.bin` files of older saves (read with weights_only=True)."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  config = transformers.ImageGPTConfig(n_embd=32, n_layer=2, n_head=4, n_positions=16,
                                       vocab_size=513)
  torch.manual_seed(0)
  hf = transformers.ImageGPTForCausalImageModeling(config).eval()
  with torch.no_grad():
    for name, p in hf.named_parameters():
      p.copy_(torch.zeros_like(p) if name.endswith('.bias') else torch.randn_like(p) * 0.3
              + (1.0 if 'ln_' in name else 0.0))
  if layout == 'bin':
    _save_hf_bin(hf, tmp_path / 'hf', sharded=bool(shard_size))
  else:
    kwargs = {'max_shard_size': shard_size} if shard_size else {}
    hf.save_pretrained(tmp_path / 'hf', safe_serialization=True, **kwargs)
    assert (tmp_path / 'hf' / 'model.safetensors').exists() == (shard_size is None)
  params, model = checkpoint.load(tmp_path / 'hf')
  assert (model.width, model.num_heads, model.num_layers, model.n_ctx) == (32, 4, 2, 16)
  tokens = np.random.default_rng(0).integers(0, 512, (2, 16))
  inputs = np.concatenate([np.full((2, 1), 512), tokens[:, :-1]], axis=1)  # sos = 512.
  with torch.no_grad():
    expected = hf(torch.as_tensor(inputs)).logits.numpy()
  ours = model.apply({'params': params}, jnp.asarray(tokens))['logits']
  np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)
  if shard_size:  # A shard the index lists but that is gone: named, not a traceback.
    shard = sorted((tmp_path / 'hf').glob(f'*-of-*.{layout}'))[-1]
    shard.unlink()
    with pytest.raises(FileNotFoundError, match=f'{shard.name}: no such'):
      checkpoint.load(tmp_path / 'hf')
  elif layout == 'bin':  # A damaged .bin: named, not torch's traceback.
    data = (tmp_path / 'hf' / 'pytorch_model.bin').read_bytes()
    (tmp_path / 'hf' / 'pytorch_model.bin').write_bytes(data[:len(data) // 2])
    with pytest.raises(UserInputError, match='pytorch_model.bin: not a readable weights-only'):
      checkpoint.load(tmp_path / 'hf')
