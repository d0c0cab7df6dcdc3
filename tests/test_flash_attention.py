"""vision_core.flash_attention (its kernels: vision_core.flash_kernels) against a float64
numpy pass and jnp autodiff, in Pallas' interpreter; and lowered for CUDA at ViT-B/16's
shapes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bench import profile_train_step
from vision_core import flash_attention, flash_kernels


def numpy_attention(q, k, v, valid_keys, causal=False):
  """float64 softmax attention over the first `valid_keys` keys (and with `causal`, over
  the keys up to the query's own position): `[B, N, H, D]` each."""
  q, k, v = (np.asarray(t, np.float64) for t in (q, k, v))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k)[..., :valid_keys]
  if causal:
    later = np.arange(valid_keys)[None, :] > np.arange(q.shape[1])[:, None]
    logits = np.where(later, -np.inf, logits)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', weights, v[:, :valid_keys])


def plain_attention(q, k, v, valid_keys, causal=False):
  logits = jnp.einsum('bqhd,bkhd->bhqk', q, k[:, :valid_keys])
  if causal:
    later = jnp.arange(valid_keys)[None, :] > jnp.arange(q.shape[1])[:, None]
    logits = jnp.where(later, -jnp.inf, logits)
  return jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(logits, -1), v[:, :valid_keys])


def value_and_grads(f, args, cotangent):
  """`f(*args)` and the gradients of `sum(f(*args) * cotangent)` for every argument, as one
  compiled program: eager, the interpreted kernels and each op of the references would be
  compiled one by one (most of these tests' time)."""
  def run(*args):
    out, vjp = jax.vjp(f, *args)
    return out, vjp(cotangent)
  return jax.jit(run)(*args)


SMALL = flash_attention.Tiles(queries=8, keys=16, backward_keys=16, backward_queries=8)
# Last, partial tiles shrunk down to 4 rows (on a GPU: 16).
TAILS = flash_attention.Tiles(16, 16, 16, 16, min_tail=4)


@pytest.mark.parametrize('tokens,valid_keys,depth,tiles,dtype,causal', [
    (21, 21, 16, SMALL, jnp.float32, False),  # ragged: 21 tokens in tiles of 8 and 16
    (27, 24, 16, SMALL, jnp.float32, False),  # 3 padding tokens, masked out of the keys
    (16, 5, 8, flash_attention.Tiles(16, 16, 16, 16), jnp.float32, False),  # one tile
    (40, 9, 16, SMALL, jnp.float32, False),  # whole key tiles past the valid keys
    (40, 37, 12, SMALL, jnp.float32, False),  # head width 12, padded to 16 in the blocks
    (45, 43, 16, flash_attention.Tiles(16, 8, 8, 32), jnp.bfloat16, False),
    # Causal (Image GPT): ragged; with masked keys; query tiles larger than the key tiles
    # and the other way round (the tiles skipped before and after the diagonal); bf16.
    (37, 37, 16, SMALL, jnp.float32, True),
    (40, 30, 16, SMALL, jnp.float32, True),
    (45, 45, 16, flash_attention.Tiles(16, 8, 8, 32), jnp.float32, True),
    (33, 33, 8, flash_attention.Tiles(8, 16, 32, 8), jnp.float32, True),
    (50, 50, 16, SMALL, jnp.bfloat16, True),
    # Shrunk last tiles: 21 = 16 + 5 rows (a tile of 8 last); keys past valid_keys in the
    # shrunk tile; fewer tokens than a tile (one shrunk program); 45 = 32 + 13 in bf16;
    # causal, with the dk/dv kernel's query loop ending in a shrunk tile.
    (21, 21, 16, TAILS, jnp.float32, False),
    (40, 37, 16, TAILS, jnp.float32, False),
    (5, 5, 8, TAILS, jnp.float32, False),
    (45, 45, 16, flash_attention.Tiles(32, 32, 32, 32, min_tail=4), jnp.bfloat16, False),
    (37, 37, 16, flash_attention.Tiles(16, 8, 16, 16, min_tail=4), jnp.float32, True)])
def test_values_and_gradients_match_numpy_and_autodiff(tokens, valid_keys, depth, tiles,
                                                       dtype, causal):
  rng = np.random.default_rng(tokens)
  q, k, v = (rng.normal(0, 0.7, (2, tokens, 3, depth)).astype(np.float32) for _ in range(3))
  cotangent = rng.normal(0, 1, (2, tokens, 3, depth)).astype(np.float32)
  tol = dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=2e-5, atol=2e-5)

  def attention(q, k, v):
    return flash_attention.attention(q.astype(dtype), k.astype(dtype), v.astype(dtype),
                                     valid_keys, tiles, True, causal=causal)

  flash = lambda *a: attention(*a).astype(jnp.float32)
  assert jax.eval_shape(attention, q, k, v) == jax.ShapeDtypeStruct(q.shape, dtype)
  out, grads = value_and_grads(flash, (q, k, v), cotangent)
  # Every query, padding tokens' included, attends to the valid keys only.
  np.testing.assert_allclose(out, numpy_attention(q, k, v, valid_keys, causal), **tol)

  _, want_grads = value_and_grads(lambda *a: plain_attention(*a, valid_keys, causal),
                                  (q, k, v), cotangent)
  for name, got, want in zip('qkv', grads, want_grads):
    np.testing.assert_allclose(got, want, err_msg=f'd{name}', **tol)
  # Masked keys get no gradient.
  np.testing.assert_array_equal(np.asarray(grads[1])[:, valid_keys:], 0)
  np.testing.assert_array_equal(np.asarray(grads[2])[:, valid_keys:], 0)


@pytest.mark.parametrize('tokens,valid_keys,depth,tiles,dtype,causal', [
    (21, 21, 16, TAILS, jnp.float32, False),  # shrunk last tiles: rows past N stay zero
    (40, 37, 12, SMALL, jnp.float32, False),  # masked keys; head width 12 padded to 16
    (45, 43, 16, flash_attention.Tiles(16, 8, 8, 32), jnp.bfloat16, False),
    (37, 37, 16, flash_attention.Tiles(16, 8, 16, 16, min_tail=4), jnp.float32, True)])
def test_bias_added_in_the_kernels_matches_numpy_and_autodiff(tokens, valid_keys, depth, tiles,
                                                               dtype, causal):
  """`bias=[3, H, D]` gives attention(q + b_q, k + b_k, v + b_v), and its gradient."""
  rng = np.random.default_rng(tokens + 1)
  q, k, v = (rng.normal(0, 0.7, (2, tokens, 3, depth)).astype(np.float32) for _ in range(3))
  bias = rng.normal(0, 0.7, (3, 3, depth)).astype(np.float32)
  cotangent = rng.normal(0, 1, (2, tokens, 3, depth)).astype(np.float32)
  tol = dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=2e-5, atol=2e-5)

  def flash(q, k, v, bias):
    return flash_attention.attention(q.astype(dtype), k.astype(dtype), v.astype(dtype),
                                     valid_keys, tiles, True, causal=causal,
                                     bias=bias.astype(dtype)).astype(jnp.float32)

  def plain(q, k, v, bias):
    return plain_attention(q + bias[0], k + bias[1], v + bias[2], valid_keys, causal)

  (out, grads), (_, want_grads) = (value_and_grads(f, (q, k, v, bias), cotangent)
                                   for f in (flash, plain))
  np.testing.assert_allclose(out, numpy_attention(
      q + bias[0], k + bias[1], v + bias[2], valid_keys, causal), **tol)
  for name, got, want in zip(('dq', 'dk', 'dv', 'dbias'), grads, want_grads):
    scale = np.abs(want).max()  # bf16: errors relative to the largest value
    np.testing.assert_allclose(got, want, err_msg=name, rtol=tol['rtol'],
                               atol=tol['atol'] * max(scale, 1))


@pytest.mark.parametrize('count, tile, min_tail, split', [
    (197, 64, 16, (3, 16)),  # ViT-B/16: three tiles of 64, then 16 rows for the last 5
    (200, 64, 16, (3, 16)),
    (192, 64, 16, (3, 0)),  # no partial tile
    (233, 64, 16, (4, 0)),  # 41 rows left need the whole tile
    (5, 64, 16, (0, 16)),
    (21, 16, 4, (1, 8)),
    (1024, 64, 16, (16, 0))])
def test_last_partial_tile_is_shrunk_to_a_power_of_two(count, tile, min_tail, split):
  assert flash_kernels._split(count, tile, min_tail) == split


def test_bad_shapes_and_key_counts_are_clear_errors():
  x = jnp.zeros((1, 8, 2, 16))
  with pytest.raises(ValueError, match=r'valid_keys=9: expected 1\.\.8'):
    flash_attention.attention(x, x, x, 9, SMALL, True)
  with pytest.raises(ValueError, match=r'expected three \[B, N, H, D\] arrays of one shape'):
    flash_attention.attention(x, x[:, :4], x, 4, SMALL, True)
  with pytest.raises(ValueError,
                     match=r'bias: expected \[3, H, D\] = \[3, 2, 16\] .*got \[2, 16\]'):
    flash_attention.attention(x, x, x, 8, SMALL, True, bias=jnp.zeros((2, 16)))


def test_lowers_to_triton_for_cuda_at_vit_b16_shapes():
  """ViT-B/16: 197 tokens (read in place, not padded), 12 heads of 64, bf16. On any host the
  kernels lower to Triton calls for CUDA: one forward, two for the gradient (dq, dk/dv)."""
  shape = jax.ShapeDtypeStruct((8, 197, 12, 64), jnp.bfloat16)

  def triton_calls(f):
    text = jax.jit(f).trace(shape, shape, shape).lower(lowering_platforms=('cuda',)).as_text()
    # The kernels' names mark them as attention in bench/profile_train_step.py's classes.
    names = sorted(set(re.findall(r'flash_attention_[a-z]+', text)))
    return text.count('custom_call @__gpu$xla.gpu.triton'), names

  attention = lambda q, k, v: flash_attention.attention(q, k, v, 197)
  assert triton_calls(attention) == (1, ['flash_attention_forward'])
  loss = lambda q, k, v: jnp.sum(attention(q, k, v).astype(jnp.float32))
  assert triton_calls(jax.grad(loss, argnums=(0, 1, 2))) == (
      3, ['flash_attention_dkv', 'flash_attention_dq', 'flash_attention_forward'])
  assert profile_train_step.kernel_class('flash_attention_dkv') == 'attention'


@pytest.mark.parametrize('tokens,valid_keys,tiles,dtype,causal', [
    (21, 21, TAILS, jnp.float32, False),  # shrunk last tiles
    (40, 37, SMALL, jnp.float32, False),  # masked keys
    (45, 43, flash_attention.Tiles(16, 8, 8, 32), jnp.bfloat16, False),
    (37, 37, flash_attention.Tiles(16, 8, 16, 16, min_tail=4), jnp.float32, True)])
def test_packed_kvq_matches_numpy_and_autodiff(tokens, valid_keys, tiles, dtype, causal):
  """attention_kvq: k, v, q packed as `[B, N, 3, H, D]` (and the bias `[3, H, D]` in that
  order). Its gradient comes back packed, dq written first and dk/dv into the same buffer
  after it: a slot left unwritten or overwritten fails here."""
  rng = np.random.default_rng(tokens + 2)
  kvq = rng.normal(0, 0.7, (2, tokens, 3, 3, 16)).astype(np.float32)
  bias = rng.normal(0, 0.7, (3, 3, 16)).astype(np.float32)
  cotangent = rng.normal(0, 1, (2, tokens, 3, 16)).astype(np.float32)
  tol = dict(rtol=2e-2, atol=2e-2) if dtype == jnp.bfloat16 else dict(rtol=2e-5, atol=2e-5)

  def flash(kvq, bias):
    return flash_attention.attention_kvq(kvq.astype(dtype), valid_keys, tiles, True,
                                         causal=causal, bias=bias.astype(dtype))

  def plain(kvq, bias):
    k, v, q = (kvq[:, :, i] + bias[i] for i in range(3))
    return plain_attention(q, k, v, valid_keys, causal)

  assert jax.eval_shape(flash, kvq, bias) == jax.ShapeDtypeStruct((2, tokens, 3, 16), dtype)
  (out, grads), (_, want_grads) = (value_and_grads(f, (kvq, bias), cotangent) for f in (
      lambda *a: flash(*a).astype(jnp.float32), plain))
  k, v, q = (kvq[:, :, i] + bias[i] for i in range(3))
  np.testing.assert_allclose(out, numpy_attention(q, k, v, valid_keys, causal), **tol)
  for name, got, want in zip(('dkvq', 'dbias'), grads, want_grads):
    scale = np.abs(want).max()
    np.testing.assert_allclose(got, want, err_msg=name, rtol=tol['rtol'],
                               atol=tol['atol'] * max(scale, 1))
  np.testing.assert_array_equal(np.asarray(grads[0])[:, valid_keys:, :2], 0)  # masked keys
  with pytest.raises(ValueError, match=r'kvq: expected \[B, N, 3, H, D\] \(k, v, q\), got'):
    flash_attention.attention_kvq(kvq[:, :, :2], valid_keys, tiles, True)
  with pytest.raises(ValueError,
                     match=r"bias: expected \[3, H, D\] = \[3, 3, 16\] \(k, v and q's\)"):
    flash_attention.attention_kvq(kvq, valid_keys, tiles, True, bias=bias[:2])


def test_packed_kvq_lowers_to_triton_for_cuda_with_its_gradient_written_in_place():
  """ViT-B/16's shapes packed: three Triton calls for the gradient, the dk/dv kernel's output
  aliased to the dq kernel's (one buffer, no concatenation)."""
  shape = jax.ShapeDtypeStruct((8, 197, 3, 12, 64), jnp.bfloat16)
  bias = jax.ShapeDtypeStruct((3, 12, 64), jnp.bfloat16)
  loss = lambda kvq, b: jnp.sum(flash_attention.attention_kvq(kvq, 197, bias=b).astype(
      jnp.float32))
  text = jax.jit(jax.grad(loss, argnums=(0, 1))).trace(shape, bias).lower(
      lowering_platforms=('cuda',)).as_text()
  assert text.count('custom_call @__gpu$xla.gpu.triton') == 3
  assert sorted(set(re.findall(r'flash_attention_\w+?(?=[^\w]|$)', text))) == [
      'flash_attention_dkv_packed', 'flash_attention_dq', 'flash_attention_forward']
  assert 'output_operand_aliases' in text
