"""An independent numpy forward pass of the ViT (and its ResNet stem), for tests only.

Written from the paper and the official parameter layout, not from our Flax code: it reads
the flat official key names directly, as a user's own reference implementation would.
"""

import math

import numpy as np


def layer_norm(x, p, eps=1e-6):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * p['scale'] + p['bias']


def gelu(x, approximate=True):
  """The tanh approximation (flax's `nn.gelu` default, used by the official ViT code) or the
  exact erf form."""
  if approximate:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
  erf = np.vectorize(math.erf)
  return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def attention(x, p, num_heads):
  b, n, d = x.shape
  q = np.einsum('bnd,dhk->bnhk', x, p['query']['kernel']) + p['query']['bias']
  k = np.einsum('bnd,dhk->bnhk', x, p['key']['kernel']) + p['key']['bias']
  v = np.einsum('bnd,dhk->bnhk', x, p['value']['kernel']) + p['value']['bias']
  logits = np.einsum('bqhk,bmhk->bhqm', q, k) / np.sqrt(q.shape[-1])
  logits -= logits.max(-1, keepdims=True)
  w = np.exp(logits)
  w /= w.sum(-1, keepdims=True)
  out = np.einsum('bhqm,bmhk->bqhk', w, v)
  return np.einsum('bqhk,hkd->bqd', out, p['out']['kernel']) + p['out']['bias']


def conv2d(x, w, stride, padding):
  """x [B, H, W, C], w [kh, kw, C, O]; padding 'VALID' or 'SAME' (TF/XLA convention)."""
  kh, kw = w.shape[:2]
  if padding == 'SAME':
    def pads(size, k):
      out = -(-size // stride)
      total = max((out - 1) * stride + k - size, 0)
      return total // 2, total - total // 2
    x = np.pad(x, [(0, 0), pads(x.shape[1], kh), pads(x.shape[2], kw), (0, 0)])
  b, h, wd, c = x.shape
  oh, ow = (h - kh) // stride + 1, (wd - kw) // stride + 1
  out = np.zeros((b, oh, ow, w.shape[-1]))
  for i in range(kh):
    for j in range(kw):
      patch = x[:, i:i + stride * oh:stride, j:j + stride * ow:stride, :]
      out += patch @ w[i, j]
  return out


def std_conv(x, w, stride, padding):
  w = (w - w.mean((0, 1, 2), keepdims=True)) / np.sqrt(w.var((0, 1, 2), keepdims=True) + 1e-5)
  return conv2d(x, w, stride, padding)


def group_norm(x, p, groups=32, eps=1e-6):
  b, h, w, c = x.shape
  g = x.reshape(b, h, w, groups, c // groups)
  mu = g.mean((1, 2, 4), keepdims=True)
  var = g.var((1, 2, 4), keepdims=True)
  g = (g - mu) / np.sqrt(var + eps)
  return g.reshape(b, h, w, c) * p['scale'] + p['bias']


def max_pool_same(x, k=3, s=2):
  b, h, w, c = x.shape
  oh, ow = -(-h // s), -(-w // s)
  th, tw = max((oh - 1) * s + k - h, 0), max((ow - 1) * s + k - w, 0)
  x = np.pad(x, [(0, 0), (th // 2, th - th // 2), (tw // 2, tw - tw // 2), (0, 0)],
             constant_values=-np.inf)
  out = np.full((b, oh, ow, c), -np.inf)
  for i in range(k):
    for j in range(k):
      out = np.maximum(out, x[:, i:i + s * oh:s, j:j + s * ow:s])
  return out


def max_pool_2x2(x):
  b, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c).max((2, 4))


def conv_stem(x, params):
  """Stages `stem{i}`: conv, 2x2 max-pool, GroupNorm, ReLU, conv, GroupNorm, ReLU."""
  i = 0
  while f'stem{i}_conv0' in params:
    x = max_pool_2x2(std_conv(x, params[f'stem{i}_conv0']['kernel'], 1, 'SAME'))
    x = np.maximum(group_norm(x, params[f'stem{i}_gn0']), 0)
    x = std_conv(x, params[f'stem{i}_conv1']['kernel'], 1, 'SAME')
    x = np.maximum(group_norm(x, params[f'stem{i}_gn1']), 0)
    i += 1
  return x


def resnet_unit(x, p, features, stride):
  residual = x
  if 'conv_proj' in p:
    residual = group_norm(std_conv(x, p['conv_proj']['kernel'], stride, 'SAME'), p['gn_proj'])
  y = np.maximum(group_norm(std_conv(x, p['conv1']['kernel'], 1, 'SAME'), p['gn1']), 0)
  y = np.maximum(group_norm(std_conv(y, p['conv2']['kernel'], stride, 'SAME'), p['gn2']), 0)
  y = group_norm(std_conv(y, p['conv3']['kernel'], 1, 'SAME'), p['gn3'])
  return np.maximum(residual + y, 0)


def forward(params, images, *, num_heads, classifier='token', patch=16, resnet_layers=None,
            gelu_approximate=True):
  """Logits `[B, classes]` for `[B, H, W, C]` images; `params` is the nested official tree."""
  x = np.asarray(images, np.float64)
  if resnet_layers is not None:
    x = std_conv(x, params['conv_root']['kernel'], 2, 'SAME')
    x = np.maximum(group_norm(x, params['gn_root']), 0)
    x = max_pool_same(x)
    width = params['conv_root']['kernel'].shape[-1]
    for s, units in enumerate(resnet_layers):
      for u in range(units):
        stride = 2 if (s > 0 and u == 0) else 1
        x = resnet_unit(x, params[f'block{s + 1}'][f'unit{u + 1}'], width * 2**s, stride)
  x = conv_stem(x, params)
  x = conv2d(x, params['embedding']['kernel'], patch, 'VALID') + params['embedding']['bias']
  b, h, w, d = x.shape
  x = x.reshape(b, h * w, d)
  if classifier == 'token':
    x = np.concatenate([np.broadcast_to(params['cls'], (b, 1, d)), x], axis=1)
  t = params['Transformer']
  x = x + t['posembed_input']['pos_embedding']
  i = 0
  while f'encoderblock_{i}' in t:
    blk = t[f'encoderblock_{i}']
    x = x + attention(layer_norm(x, blk['LayerNorm_0']), blk['MultiHeadDotProductAttention_0'],
                      num_heads)
    y = layer_norm(x, blk['LayerNorm_1'])
    mlp = blk['MlpBlock_0']
    y = gelu(y @ mlp['Dense_0']['kernel'] + mlp['Dense_0']['bias'], gelu_approximate)
    x = x + y @ mlp['Dense_1']['kernel'] + mlp['Dense_1']['bias']
    i += 1
  x = layer_norm(x, t['encoder_norm'])
  x = x[:, 0] if classifier == 'token' else x.mean(1)
  if 'pre_logits' in params:
    x = np.tanh(x @ params['pre_logits']['kernel'] + params['pre_logits']['bias'])
  return x @ params['head']['kernel'] + params['head']['bias']
