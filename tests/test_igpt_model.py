"""Image GPT model: released sizes, logits against an independent numpy forward pass, cache."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from igpt_jax import model as igpt_model
from vision_core import npz
from vision_core.errors import UserInputError


def tiny_model(**kwargs):
  kwargs.setdefault('n_ctx', 16)
  return igpt_model.ImageGPT(**igpt_model.get_size('testing'), **kwargs)


def random_params(model, seed=0):
  """Every leaf replaced by noise (zero-initialised wtet and clf too), as numpy float32."""
  shapes = igpt_model.param_shapes(model)
  rng = np.random.default_rng(seed)
  def noise(s):
    if len(s.shape) == 1:  # Norm gains (and sos): around one.
      return (1.0 + 0.2 * rng.normal(size=s.shape)).astype(np.float32)
    return (0.3 * rng.normal(size=s.shape)).astype(np.float32)
  return jax.tree.map(noise, shapes)


def numpy_forward(flat, tokens, *, n_head, bert_keep=None):
  """OpenAI's forward pass in float64 numpy, from flat TF-style names (`h0/attn/q_proj`).

  Written from the release's equations, independently of igpt_jax: returns
  (gen_logits [B, T, V], per-layer ln_1 outputs, ln_f output).
  """
  p = {k: np.asarray(v, np.float64) for k, v in flat.items()}
  bert = 'sos' not in p
  b, t = tokens.shape
  n_layer = len({k.split('/')[0] for k in p if k.startswith('h')})

  def norm(x, g):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + 1e-5) * g

  h = p['wte'][tokens]
  if bert:
    h = h * bert_keep[..., None]
  else:
    h = np.concatenate([np.broadcast_to(p['sos'], (b, 1, h.shape[-1])), h[:, :-1]], axis=1)
  h = h + p['wpe'][np.arange(t)]
  mask = np.tril(np.ones((t, t)))
  ln1 = []
  for i in range(n_layer):
    pre = f'h{i}/'
    x = norm(h, p[pre + 'ln_1/g'])
    ln1.append(x)
    q, k, v = (np.einsum('bsf,hef->bhse', x, p[pre + f'attn/{n}_proj']) for n in 'qkv')
    w = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    if not bert:
      w = w * mask - 1e10 * (1 - mask)
    w = np.exp(w - w.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    h = h + np.einsum('bhse,hef->bsf', w @ v, p[pre + 'attn/c_proj'])
    x = norm(h, p[pre + 'ln_2/g']) @ p[pre + 'mlp/c_fc/w']
    x = x / (1 + np.exp(-1.702 * x))
    h = h + x @ p[pre + 'mlp/c_proj/w']
  h = norm(h, p['ln_f/g'])
  del n_head
  return h @ p['wtet'].T, ln1, h


@pytest.mark.parametrize('size,count', [('S', 76_571_648), ('M', 455_157_760),
                                        ('L', 1_362_250_752)])
def test_released_sizes_have_exact_parameter_counts(size, count):
  model = igpt_model.ImageGPT(**igpt_model.get_size(size))
  shapes = igpt_model.param_shapes(model)
  assert igpt_model.count_params(shapes) == count
  d = model.width
  assert shapes['h0']['attn']['q_proj'].shape == (model.num_heads, d // model.num_heads, d)
  assert shapes['wpe'].shape == (1024, d) and shapes['wtet'].shape == (512, d)


def test_logits_features_and_clf_match_numpy():
  model = tiny_model(num_classes=3)
  params = random_params(model)
  tokens = np.random.default_rng(1).integers(0, 512, (2, 16))
  out = model.apply({'params': params}, jnp.asarray(tokens), return_features=True)
  flat = npz.flatten(params)
  logits, ln1, hf = numpy_forward(flat, tokens, n_head=model.num_heads)
  np.testing.assert_allclose(out['logits'], logits, rtol=2e-4, atol=2e-4)
  for i, x in enumerate(ln1):
    np.testing.assert_allclose(out['features'][i], x.mean(1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out['features'][-1], hf.mean(1), rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out['clf_logits'], hf.mean(1) @ flat['clf/wclf'].T.astype(
      np.float64), rtol=2e-4, atol=2e-4)


def test_bert_variant_matches_numpy_and_is_not_causal():
  model = tiny_model(bert=True)
  params = random_params(model)
  assert 'sos' not in params
  rng = np.random.default_rng(2)
  tokens = rng.integers(0, 512, (2, 16))
  keep = (rng.uniform(size=(2, 16)) > 0.15).astype(np.float32)
  out = model.apply({'params': params}, jnp.asarray(tokens), bert_keep=jnp.asarray(keep))
  logits, _, _ = numpy_forward(npz.flatten(params), tokens, n_head=4, bert_keep=keep)
  np.testing.assert_allclose(out['logits'], logits, rtol=2e-4, atol=2e-4)
  # Changing the last token changes the first position's logits: attention is bidirectional.
  changed = tokens.copy()
  changed[:, -1] = (changed[:, -1] + 1) % 512
  out2 = model.apply({'params': params}, jnp.asarray(changed), bert_keep=jnp.asarray(keep))
  assert not np.allclose(out['logits'][:, 0], out2['logits'][:, 0])


def test_causal_model_ignores_the_future():
  model = tiny_model()
  params = random_params(model)
  tokens = np.random.default_rng(3).integers(0, 512, (1, 16))
  changed = tokens.copy()
  changed[0, 10] = (changed[0, 10] + 7) % 512
  a = model.apply({'params': params}, jnp.asarray(tokens))['logits']
  b = model.apply({'params': params}, jnp.asarray(changed))['logits']
  np.testing.assert_array_equal(a[:, :11], b[:, :11])  # x_10 is the input of position 11.
  assert not np.allclose(a[:, 11], b[:, 11])


def test_cached_decode_matches_full_forward():
  model = tiny_model()
  params = random_params(model)
  tokens = jnp.asarray(np.random.default_rng(4).integers(0, 512, (3, 16)))
  full = model.apply({'params': params}, tokens)['logits']
  cache = igpt_model.init_cache(model, 3)
  prev = jnp.pad(tokens[:, :-1], ((0, 0), (1, 0)))
  decode = jax.jit(lambda p, c, s: model.apply({'params': params}, p, c, s,
                                               method=model.decode))
  chunks = []
  # A 5-position prefill, then one position at a time (start traced: one compile).
  logits, cache = decode(prev[:, :5], cache, 0)
  chunks.append(logits)
  for t in range(5, 16):
    logits, cache = decode(prev[:, t:t + 1], cache, jnp.int32(t))
    chunks.append(logits)
  np.testing.assert_allclose(jnp.concatenate(chunks, 1), full, rtol=1e-4, atol=1e-4)


def test_too_many_tokens_and_bad_sizes_are_clear_errors():
  model = tiny_model(n_ctx=8)
  params = random_params(model)
  with pytest.raises(UserInputError, match='16 tokens per image but the model\'s n_ctx is 8'):
    model.apply({'params': params}, jnp.zeros((1, 16), jnp.int32))
  with pytest.raises(UserInputError, match=r'expected \[B, T\]'):
    model.apply({'params': params}, jnp.zeros((16,), jnp.int32))
  with pytest.raises(UserInputError, match='model size'):
    igpt_model.get_size('XL')


@pytest.mark.parametrize('bert', [False, True])
def test_flash_attention_matches_numpy_and_einsum_gradients(bert):
  """attention='pallas_interpret': vision_core.flash_attention's kernels (causal for the
  generative model, not for BERT), interpreted; 40 tokens: one ragged 64-row tile."""
  model = tiny_model(n_ctx=40, bert=bert, attention='pallas_interpret')
  params = random_params(model)
  rng = np.random.default_rng(5)
  tokens = rng.integers(0, 512, (2, 40))
  keep = (rng.uniform(size=(2, 40)) > 0.15).astype(np.float32) if bert else None
  kwargs = dict(bert_keep=jnp.asarray(keep)) if bert else {}
  out = model.apply({'params': params}, jnp.asarray(tokens), **kwargs)
  logits, _, _ = numpy_forward(npz.flatten(params), tokens, n_head=4, bert_keep=keep)
  np.testing.assert_allclose(out['logits'], logits, rtol=2e-4, atol=2e-4)

  def loss(params, model):
    return jnp.mean(model.apply({'params': params}, jnp.asarray(tokens), **kwargs)['logits']
                    ** 2)
  grads = jax.grad(loss)(params, model)
  want = jax.grad(loss)(params, tiny_model(n_ctx=40, bert=bert))
  for (path, got), expected in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                                   jax.tree.leaves(want)):
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


def test_bad_attention_settings_are_named():
  tokens = jnp.zeros((1, 16), jnp.int32)
  with pytest.raises(ValueError, match=r"attention='flash': expected one of einsum, pallas"):
    tiny_model(attention='flash').init(jax.random.key(0), tokens)
  if jax.default_backend() != 'gpu':
    with pytest.raises(ValueError, match=r"attention='pallas' runs on NVIDIA GPUs only, and "
                       r"this run's backend is"):
      tiny_model(attention='pallas').init(jax.random.key(0), tokens)
