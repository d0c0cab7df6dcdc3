"""HF transformers ViT saves (`ViTForImageClassification`, `ViTModel`) as our parameter tree.

    loaded = hf_import.load('vit-base-patch16-224/')  # a save_pretrained folder (local)
    loaded.params       # the official tree (models_vit), for images in [-1, 1]
    loaded.config       # VisionTransformer's config: widths from the weights, heads from
                        # config.json
    loaded.class_names  # config.json's id2label, or None

`vit_jax.checkpoint.load` and `load_for_inference` call this for any HF save, so predict,
assess, the study and fine-tuning (`pretrained=FOLDER`) take one where they take an `.npz`.

The tensors, HF -> ours (D width, H heads; `vit.` before each in the classification model):
  embeddings.cls_token [1, 1, D]                     -> cls
  embeddings.position_embeddings [1, N, D]           -> Transformer/posembed_input/pos_embedding
  embeddings.patch_embeddings.projection [D, C, p, p] -> embedding/kernel [p, p, C, D]
  encoder.layer.{i}.layernorm_before / _after         -> encoderblock_{i}/LayerNorm_0 / _1
  ...attention.attention.{query,key,value} [D, D]    -> MultiHeadDotProductAttention_0/
                                                        {query,key,value}/kernel [D, H, D/H]
  ...attention.output.dense [D, D]                   -> .../out/kernel [H, D/H, D]
  ...intermediate.dense, ...output.dense             -> MlpBlock_0/Dense_0, Dense_1
  layernorm                                          -> Transformer/encoder_norm
  pooler.dense (ViTModel saves)                      -> pre_logits (dense + tanh, as official)
  classifier [C, D]                                  -> head/kernel [D, C]
(torch's Linear stores [out, in], ours [in, out]; LayerNorm weight is our scale.)

Inputs: every model here takes images in [-1, 1]; HF's take `(x * rescale_factor - mean) /
std` of the 0-255 pixels, with preprocessor_config.json's values (mean = std = 0.5 for Google's
releases, ImageNet's for DeiT's). That per-channel affine map is folded into the patch
embedding, which is linear in the pixels (no padding), so the loaded model takes [-1, 1] and
gives HF's outputs. HF's LayerNorm epsilon (1e-12 in its configs) is replaced by ours (1e-6):
tests/test_vit_hf_import.py measures the difference against HF's forward pass (< 1e-4).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Mapping

import numpy as np

from vision_core import hf_io, io
from vision_core.errors import UserInputError

# config.json's hidden_act -> our gelu_approximate; other activations are not ours.
_GELU = {'gelu': False, 'gelu_new': True, 'gelu_pytorch_tanh': True}
_INT_FIELDS = ('hidden_size', 'num_hidden_layers', 'num_attention_heads', 'intermediate_size',
               'num_channels')
_BIN_HINT = (' Or save it as safetensors elsewhere: ViTForImageClassification.from_pretrained(d)'
             '.save_pretrained(d, safe_serialization=True).')
_TIMM = ("timm's layout is not read here: HF transformers ViT saves (model_type 'vit') and "
         'official .npz checkpoints are.')
# Tensors of HF ViT models that are not part of the forward pass to classes or features
# (ViTForMaskedImageModeling's mask token and decoder).
_IGNORED = re.compile(r'^(vit\.)?embeddings\.mask_token$|^decoder\.')
_LAYER = re.compile(r'^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$')
# The tensors a save must hold (HF names without `vit.`), outside and in each layer.
_REQUIRED = ('embeddings.cls_token', 'embeddings.position_embeddings',
             'embeddings.patch_embeddings.projection.weight',
             'embeddings.patch_embeddings.projection.bias', 'layernorm.weight', 'layernorm.bias')
_LAYER_REQUIRED = tuple(f'{part}.{leaf}' for part in (
    'layernorm_before', 'layernorm_after', 'attention.output.dense', 'intermediate.dense',
    'output.dense') for leaf in ('weight', 'bias')) + tuple(
        f'attention.attention.{part}.weight' for part in ('query', 'key', 'value'))
_LAYER_PARTS = {
    'layernorm_before': ('LayerNorm_0', None),
    'layernorm_after': ('LayerNorm_1', None),
    'attention.attention.query': ('MultiHeadDotProductAttention_0/query', 'heads_out'),
    'attention.attention.key': ('MultiHeadDotProductAttention_0/key', 'heads_out'),
    'attention.attention.value': ('MultiHeadDotProductAttention_0/value', 'heads_out'),
    'attention.output.dense': ('MultiHeadDotProductAttention_0/out', 'heads_in'),
    'intermediate.dense': ('MlpBlock_0/Dense_0', 'dense'),
    'output.dense': ('MlpBlock_0/Dense_1', 'dense'),
}


@dataclasses.dataclass(frozen=True)
class HFViT:
  params: dict[str, Any]
  config: Any  # ml_collections.ConfigDict for models_vit.VisionTransformer (no num_classes)
  class_names: list[str] | None  # id2label, in class order, when the save has a classifier
  resolution: int | None  # config.json's image_size
  source: str  # the weights file read


def is_hf_save(path: str | os.PathLike) -> bool:
  """HF weights (a `.safetensors` / `.bin` / shard index file, or a save_pretrained folder),
  not an `.npz`."""
  path = os.fspath(path)
  return not path.endswith('.npz') and hf_io.is_save(path)


def load(path: str | os.PathLike) -> HFViT:
  """Reads an HF ViT save (the folder, or its weights file with config.json beside it)."""
  path = os.fspath(path)
  if io.is_uri(path):
    raise UserInputError(f'{path}: HF saves are read from a local folder; copy it first.')
  weights = hf_io.weights_file(path)
  config_path = hf_io.config_path(weights)
  config = hf_io.read_config(weights, 'ViTConfig')
  if not config:
    raise UserInputError(f'{weights}: no config.json beside it; an HF ViT save needs it (the '
                         'number of heads is not stored in the weights).')
  _check_config(config, config_path)
  state = hf_io.read_weights(weights, hint=_BIN_HINT)
  _check_complete(state, source=weights)
  params = _to_tree(state, num_heads=config.get('num_attention_heads', 12), source=weights)
  _check_sizes(config, params, config_path=config_path, weights=weights)
  scale, shift = _input_affine(hf_io.processor_config_path(weights))
  params['embedding'] = fold_input_affine(params['embedding'], scale, shift)
  model_config = _model_config(config, params, name=_model_name(config, weights))
  return HFViT(params=params, config=model_config,
               class_names=_class_names(config, params, config_path),
               resolution=_image_size(config, config_path), source=weights)


def _check_config(config: Mapping[str, Any], source: str) -> None:
  if 'model_type' not in config and 'architecture' in config:  # timm's config.json
    raise UserInputError(f'{source}: a timm save (architecture {config["architecture"]!r}); '
                         + _TIMM)
  hf_io.check_positive_ints(config, _INT_FIELDS, source=source)
  model_type = config.get('model_type', 'vit')
  if model_type != 'vit':
    raise UserInputError(f'{source}: model_type {model_type!r}; this reads HF ViT saves '
                         "(model_type 'vit': ViTModel, ViTForImageClassification).")
  act = config.get('hidden_act', 'gelu')
  if act not in _GELU:
    raise UserInputError(f'{source}: hidden_act {act!r}; the ViT here computes one of '
                         f'{", ".join(_GELU)}.')
  if config.get('pooler_act', 'tanh') != 'tanh':
    raise UserInputError(f'{source}: pooler_act {config["pooler_act"]!r}; expected tanh.')


def _to_tree(state: Mapping[str, np.ndarray], *, num_heads: int, source: str) -> dict:
  """HF tensor names -> our nested tree; every tensor placed, reshaped, or reported."""
  tree: dict[str, Any] = {}
  problems = []

  def put(path: str, value):
    node = tree
    *parents, leaf = path.split('/')
    for part in parents:
      node = node.setdefault(part, {})
    node[leaf] = np.asarray(value, np.float32)

  for key, value in sorted(state.items()):
    value = np.asarray(value)
    name = key[len('vit.'):] if key.startswith('vit.') else key
    if _IGNORED.search(key):
      continue
    leaf = 'scale' if key.endswith('weight') and 'layernorm' in key else (
        'kernel' if key.endswith('weight') else 'bias')
    layer = _LAYER.match(name)
    try:
      if name == 'embeddings.cls_token':
        put('cls', _shaped(value, 3))
      elif name == 'embeddings.position_embeddings':
        put('Transformer/posembed_input/pos_embedding', _shaped(value, 3))
      elif name.startswith('embeddings.patch_embeddings.projection.'):
        put(f'embedding/{leaf}', _shaped(value, 4).transpose(2, 3, 1, 0) if leaf == 'kernel'
            else _shaped(value, 1))
      elif name.startswith(('layernorm.', 'pooler.dense.', 'classifier.')):
        where = {'layernorm': 'Transformer/encoder_norm', 'pooler': 'pre_logits',
                 'classifier': 'head'}[name.split('.')[0]]
        put(f'{where}/{leaf}', _shaped(value, 2).T if leaf == 'kernel' else _shaped(value, 1))
      elif layer and layer.group(2) in _LAYER_PARTS:
        where, kind = _LAYER_PARTS[layer.group(2)]
        put(f'Transformer/encoderblock_{layer.group(1)}/{where}/{leaf}',
            _layer_tensor(value, kind, leaf, num_heads))
      else:
        problems.append(f'  extra    {key}: shape {value.shape} is not a ViT weight')
    except ValueError as e:
      problems.append(f'  shape    {key}: {e}, found {value.shape}')
  if problems:
    raise UserInputError(f'{source}: not a loadable HF ViT checkpoint ({len(problems)} '
                         'problems):\n' + '\n'.join(problems))
  _add_missing_qkv_biases(tree, num_heads)
  return tree


def _shaped(value: np.ndarray, ndim: int) -> np.ndarray:
  if value.ndim != ndim:
    raise ValueError(f'expected {ndim} dimensions')
  return value


def _layer_tensor(value: np.ndarray, kind, leaf: str, num_heads: int) -> np.ndarray:
  """One encoder-layer tensor in our layout (`kind` from `_LAYER_PARTS`)."""
  if kind is None or leaf == 'bias' and kind in ('dense', 'heads_in'):
    return _shaped(value, 1)
  if leaf == 'bias':  # query/key/value bias [D] -> [H, D/H]
    d = _shaped(value, 1).shape[0]
    if d % num_heads:
      raise ValueError(f'expected a width divisible by num_attention_heads={num_heads}')
    return value.reshape(num_heads, d // num_heads)
  kernel = _shaped(value, 2).T  # [in, out]
  if kind == 'dense':
    return kernel
  d_in, d_out = kernel.shape
  if (d_out if kind == 'heads_out' else d_in) % num_heads:
    raise ValueError(f'expected widths divisible by num_attention_heads={num_heads}')
  if kind == 'heads_out':
    return kernel.reshape(d_in, num_heads, d_out // num_heads)
  return kernel.reshape(num_heads, d_in // num_heads, d_out)


def _add_missing_qkv_biases(tree: dict, num_heads: int) -> None:
  """qkv_bias=False saves have no query/key/value biases; ours are then zero."""
  for name, block in tree.get('Transformer', {}).items():
    attention = block.get('MultiHeadDotProductAttention_0', {}) if name.startswith(
        'encoderblock_') else {}
    for part in ('query', 'key', 'value'):
      kernel = attention.get(part, {}).get('kernel')
      if kernel is not None and 'bias' not in attention[part]:
        attention[part]['bias'] = np.zeros(kernel.shape[1:], np.float32)


def _check_complete(state: Mapping[str, np.ndarray], *, source: str) -> None:
  """Every tensor of a ViT's forward pass is in the save (q/k/v biases may be absent:
  qkv_bias=False), else `UserInputError` naming the missing ones."""
  names = {k[len('vit.'):] if k.startswith('vit.') else k for k in state}
  if any(n.startswith('blocks.') for n in names):
    raise UserInputError(f'{source}: timm tensor names (blocks.0.attn.qkv, ...); ' + _TIMM)
  layers = sorted({int(m.group(1)) for n in names if (m := _LAYER.match(n))})
  required = list(_REQUIRED) + [f'encoder.layer.{i}.{part}' for i in layers
                                for part in _LAYER_REQUIRED]
  missing = [n for n in required if n not in names]
  if not layers:
    missing.append('encoder.layer.0.*')
  elif layers != list(range(len(layers))):
    missing.append(f'encoder layers between 0 and {layers[-1]} (found {layers})')
  if missing:
    more = f' and {len(missing) - 6} more' if len(missing) > 6 else ''
    raise UserInputError(f'{source}: not a complete HF ViT save; missing '
                         f'{", ".join(missing[:6])}{more}.')


def _check_sizes(config: Mapping[str, Any], params: Mapping[str, Any], *, config_path: str,
                 weights: str) -> None:
  """config.json's sizes against the weights' (all present: `_check_complete`)."""
  transformer = params['Transformer']
  layers = sum(k.startswith('encoderblock_') for k in transformer)
  kernel = params['embedding']['kernel']
  mlp = transformer['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']
  patch = config.get('patch_size', kernel.shape[0])
  patch = patch if isinstance(patch, (list, tuple)) else [patch, patch]
  shown = {'hidden_size': (kernel.shape[-1], 'the weights are {} wide'),
           'num_hidden_layers': (layers, 'the weights hold {} layers'),
           'num_channels': (kernel.shape[2], 'the patch embedding takes {} channels'),
           'intermediate_size': (mlp.shape[1], 'the MLP is {} wide')}
  bad = [f'{key}={config[key]} but {said.format(found)}' for key, (found, said) in shown.items()
         if key in config and config[key] != found]
  if list(patch) != list(kernel.shape[:2]):
    bad.append(f'patch_size={config.get("patch_size")} but the patch embedding is '
               f'{kernel.shape[0]}x{kernel.shape[1]}')
  if bad:
    raise UserInputError(f'{config_path} does not describe the weights in {weights}: '
                         f'{"; ".join(bad)}.')


def _input_affine(path: str) -> tuple[np.ndarray, np.ndarray]:
  """`(scale [C] or [1], shift)` with HF's input = scale * ours + shift, ours in [-1, 1]
  (pixel = (ours + 1) * 127.5), from preprocessor_config.json (HF's defaults without one)."""
  pp = io.read_json_object(path, "HF's image processor config") if os.path.exists(path) else {}
  rescale = pp.get('rescale_factor', 1 / 255) if pp.get('do_rescale', True) else 1.0
  mean, std = (pp.get('image_mean', 0.5), pp.get('image_std', 0.5)) if pp.get(
      'do_normalize', True) else (0.0, 1.0)
  try:
    rescale, mean, std = (np.asarray(v, np.float64).reshape(-1) for v in (rescale, mean, std))
    ok = rescale.size == 1 and np.all(std != 0) and np.isfinite(
        np.concatenate([rescale, mean, std])).all()
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise UserInputError(f'{path}: rescale_factor, image_mean and image_std must be numbers '
                         '(or lists of one per channel), std nonzero.')
  return 127.5 * rescale / std, (127.5 * rescale - mean) / std


# HF processors' `resample`: PIL's filter numbers -> `vision_core.data.preprocess` names.
_PIL_FILTERS = {0: 'nearest', 1: 'lanczos', 2: 'bilinear', 3: 'bicubic', 4: 'box', 5: 'hamming'}


def test_ops(path: str | os.PathLike, resolution: int) -> str | None:
  """The op spec (`vision_core.data.preprocess`) that prepares an RGB image for the model as
  the save's preprocessor_config.json says: resize (to a size, or the shorter side), centre
  crop, then [-1, 1] (the normalisation is folded into the weights); without a resize or crop
  in it, a resize to `resolution`. None without the file. `UserInputError` when its images
  would not be `resolution` pixels square."""
  source = hf_io.processor_config_path(hf_io.weights_file(path))
  if not os.path.exists(source):
    return None
  pp = io.read_json_object(source, "HF's image processor config")
  ops, size = ['to_rgb'], None
  method = _PIL_FILTERS.get(pp.get('resample', 2))
  if method is None:
    raise UserInputError(f'{source}: resample {pp.get("resample")!r}; expected a PIL filter '
                         f'number ({", ".join(f"{k} {v}" for k, v in _PIL_FILTERS.items())}).')
  for field, op in (('size', 'resize'), ('crop_size', 'central_crop')):
    if not pp.get('do_resize' if field == 'size' else 'do_center_crop', field == 'size'):
      continue
    value = pp.get(field, resolution)
    if isinstance(value, dict) and 'shortest_edge' in value and field == 'size':
      ops.append(f"resize_small({value['shortest_edge']!r}, method='{method}')")
      size = 'shorter side'
      continue
    if isinstance(value, dict):
      value = (value.get('height'), value.get('width'))
    hw = value if isinstance(value, (list, tuple)) else (value, value)
    if len(hw) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                               for s in hw):
      raise UserInputError(f'{source}: {field} {pp.get(field)!r}; expected a positive number, '
                           '{"height": H, "width": W} or {"shortest_edge": S}.')
    size = tuple(hw)
    ops.append(f"resize({size}, method='{method}')" if op == 'resize' else
               f'central_crop({size})')
  if size is None:  # (HF would pass the image as it is: any other size fails)
    ops.append(f'resize({resolution})')
  elif size != (resolution, resolution):
    shape = 'of any shape' if size == 'shorter side' else f'{size[0]}x{size[1]} pixels'
    raise UserInputError(f'{source}: its images are {shape}, but the model takes '
                         f'{resolution}x{resolution}.')
  return '|'.join(ops + ['value_range(-1, 1)'])


def fold_input_affine(embedding: Mapping[str, np.ndarray], scale, shift) -> dict:
  """Patch embedding `{kernel [p, p, C, D], bias [D]}` for inputs `x` that gives what the
  given one gives for `scale * x + shift` (per channel `[C]`, or one value for all)."""
  kernel = np.asarray(embedding['kernel'], np.float64)
  channels = kernel.shape[2]
  scale, shift = (np.broadcast_to(np.asarray(v, np.float64), (channels,)) if np.size(v) in (
      1, channels) else None for v in (scale, shift))
  if scale is None or shift is None:
    raise UserInputError(f'image_mean / image_std: one value or {channels} (one per input '
                         'channel) expected.')
  bias = np.asarray(embedding['bias'], np.float64) + np.einsum('ijcd,c->d', kernel, shift)
  return {'kernel': (kernel * scale[:, None]).astype(np.float32),
          'bias': bias.astype(np.float32)}


def _model_config(config: Mapping[str, Any], params: Mapping[str, Any], *, name: str):
  import ml_collections  # pylint: disable=g-import-not-at-top
  kernel = params['embedding']['kernel']
  block = params['Transformer']['encoderblock_0']
  pre_logits = params.get('pre_logits', {}).get('kernel')
  return ml_collections.ConfigDict(dict(
      model_name=name,
      patches={'size': tuple(int(s) for s in kernel.shape[:2])},
      hidden_size=int(kernel.shape[-1]),
      transformer=dict(
          mlp_dim=int(block['MlpBlock_0']['Dense_0']['kernel'].shape[1]),
          num_heads=int(config.get('num_attention_heads', 12)),
          num_layers=sum(k.startswith('encoderblock_') for k in params['Transformer']),
          attention_dropout_rate=0.0, dropout_rate=0.0),
      classifier='token',
      representation_size=None if pre_logits is None else int(pre_logits.shape[1]),
      gelu_approximate=_GELU[config.get('hidden_act', 'gelu')],
      channels=int(kernel.shape[2])))


def _model_name(config: Mapping[str, Any], weights: str) -> str:
  name = config.get('_name_or_path')
  if not isinstance(name, str) or not name:
    name = os.path.basename(os.path.dirname(os.path.abspath(weights)))
  return f'hf:{name}'


def _class_names(config: Mapping[str, Any], params: Mapping[str, Any],
                 source: str) -> list[str] | None:
  """id2label in class order when the save has a classifier; None without one or names."""
  if 'head' not in params or not isinstance(config.get('id2label'), dict):
    return None
  num_classes = params['head']['bias'].shape[0]
  labels = {str(k): v for k, v in config['id2label'].items()}
  names = [labels.get(str(i)) for i in range(num_classes)]
  if len(labels) != num_classes or not all(isinstance(n, str) for n in names):
    raise UserInputError(f'{source}: id2label must name classes 0..{num_classes - 1} (the '
                         f'classifier has {num_classes} rows), found {len(labels)} entries.')
  return names


def _image_size(config: Mapping[str, Any], source: str) -> int | None:
  size = config.get('image_size')
  if size is None:
    return None
  sizes = list(size) if isinstance(size, (list, tuple)) else [size]
  if (len(set(sizes)) != 1 or isinstance(sizes[0], bool) or not isinstance(sizes[0], int)
      or sizes[0] < 1):
    raise UserInputError(f'{source}: image_size {size!r}; expected one positive whole number '
                         '(square images).')
  return sizes[0]
