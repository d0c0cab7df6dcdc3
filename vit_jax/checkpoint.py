"""Official ViT `.npz` checkpoints (and HF saves): load, save, and adapt for fine-tuning.

The released files (gs://vit_models/imagenet21k, imagenet21k+imagenet2012, augreg, sam) hold
one array per parameter under flat `'/'`-joined keys, some with pre-Linen module names
(`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`) and, in old hybrids,
GroupNorm scales of shape `[1, 1, 1, C]`. `load` turns any of them into the tree that
`models_vit.VisionTransformer` uses; `save` writes that tree back in the same layout. HF
transformers' ViT saves (a save_pretrained folder or its weights file) load into the same tree
(`vit_jax.hf_import`), wherever an `.npz` is taken.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import os
import re
from typing import Any, Mapping

import numpy as np

from vision_core import npz
from vision_core.errors import UserInputError
from vit_jax import hf_import

_NUMBERED = re.compile(r'^(.*)_(\d+)$')


def convert_pre_linen(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Renumbers pre-Linen module names per type, at every level of the tree.

  Pre-Linen numbered sibling modules in one sequence across types (`LayerNorm_0`,
  `MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`); Linen numbers each type on
  its own (`LayerNorm_0`, `MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`).
  Names already in Linen form come out unchanged; names without a number are kept.
  """
  if not isinstance(tree, Mapping):
    return tree
  by_prefix = collections.defaultdict(list)
  for key in tree:
    match = _NUMBERED.match(key)
    if match and isinstance(tree[key], Mapping):
      by_prefix[match.group(1)].append((int(match.group(2)), key))
  renamed = {}
  for prefix, numbered in by_prefix.items():
    # `encoderblock_{i}` counts layers, not module creation order, and is already per type.
    for new_index, (_, key) in enumerate(sorted(numbered)):
      renamed[key] = f'{prefix}_{new_index}'
  return {renamed.get(k, k): convert_pre_linen(v) for k, v in tree.items()}


def _fix_groupnorm(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Squeezes old GroupNorm `scale`/`bias` of shape `[1, 1, 1, C]` to `[C]`."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, Mapping):
      value = _fix_groupnorm(value)
      if key.startswith('gn') and value.keys() <= {'scale', 'bias'}:
        value = {k: np.reshape(v, (-1,)) for k, v in value.items()}
    out[key] = value
  return out


def load(path: str | os.PathLike) -> dict[str, Any]:
  """Reads an official (or our) `.npz` checkpoint into a nested parameter dict of numpy arrays;
  an HF ViT save (`hf_import.is_hf_save`) into the same tree.

  Never unpickles (`allow_pickle=False`); a missing, corrupt or pickle-holding file raises an
  error naming the file.
  """
  if hf_import.is_hf_save(path):
    return hf_import.load(path).params
  flat = npz.load_flat(path)
  _check_finite(flat, source=os.fspath(path))
  return _fix_groupnorm(convert_pre_linen(npz.unflatten(flat, source=os.fspath(path))))


def _check_finite(flat: Mapping[str, np.ndarray], *, source: str) -> None:
  """Every array numeric and finite. A string array failed deep in JAX; NaN or infinite
  weights (a diverged run's, or a damaged file's) would train to a NaN loss blamed on the
  learning rate, or predict 'nan%' for every class."""
  for key, value in flat.items():
    if value.dtype.kind not in 'biuf':  # strings, bytes, dates, records
      raise UserInputError(f'{source}: entry {key!r} has dtype {value.dtype}; expected '
                           'numeric arrays (float, int or bool).')
  bad = [k for k, v in flat.items() if v.dtype.kind == 'f' and not np.isfinite(v).all()]
  if bad:
    raise UserInputError(
        f'{source}: {len(bad)} arrays hold NaN or infinite values (e.g. {bad[0]!r}); the '
        'checkpoint is damaged or from a run that diverged.')


def save(path: str | os.PathLike, params: Mapping[str, Any], *, overwrite: bool = False) -> None:
  """Writes `params` in the official flat layout, atomically; refuses to overwrite by default.

  The file loads with `load` here and with the official code's `checkpoint.load`.
  """
  flat = npz.flatten(params)
  npz.save_flat(path, {k: np.asarray(v) for k, v in flat.items()}, overwrite=overwrite)


def load_params(path: str | os.PathLike, expected: Mapping[str, Any]) -> dict[str, Any]:
  """`load`, then checks that every key and shape matches `expected` (e.g. the init params).

  Raises `UserInputError` listing each missing, extra or mis-shaped key with both shapes.
  """
  params = load(path)
  npz.check_matches(params, expected, source=os.fspath(path))
  return params


def interpolate_grid(grid: np.ndarray, new_size: int) -> np.ndarray:
  """Bilinear resize of a `[g, g, D]` grid to `[new, new, D]`, corners aligned.

  The same mapping as `scipy.ndimage.zoom(grid, (new/g, new/g, 1), order=1)`: output index
  `i` samples input coordinate `i * (g - 1) / (new - 1)`.
  """
  def resize_axis(x, axis, size):
    old = x.shape[axis]
    if size == old:
      return x
    coords = np.zeros(size) if size == 1 or old == 1 else np.arange(size) * (old - 1) / (size - 1)
    lo = np.clip(np.floor(coords).astype(int), 0, old - 1)
    hi = np.minimum(lo + 1, old - 1)
    frac = (coords - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    return np.take(x, lo, axis) * (1 - frac) + np.take(x, hi, axis) * frac
  grid = np.asarray(grid, np.float64)
  out = resize_axis(resize_axis(grid, 0, new_size), 1, new_size)
  return out


def resize_posemb(posemb: np.ndarray, num_tokens: int, *, has_class_token: bool,
                  source: str = 'position embeddings') -> np.ndarray:
  """Resizes `[1, N, D]` position embeddings to `[1, num_tokens, D]`.

  The class-token embedding (first row, when `has_class_token`) is kept as is; the patch
  grid is interpolated bilinearly to the new square grid. `source` names them in errors.
  """
  posemb = np.asarray(posemb)
  if posemb.ndim != 3 or posemb.shape[0] != 1:
    raise UserInputError(f'{source} has shape {posemb.shape}, expected [1, tokens, width].')
  start = 1 if has_class_token else 0
  tok, grid = posemb[:, :start], posemb[0, start:]
  old, new = int(round(np.sqrt(len(grid)))), int(round(np.sqrt(num_tokens - start)))
  if old * old != len(grid) or new * new != num_tokens - start:
    raise UserInputError(
        f'{source}: cannot resize a grid of {len(grid)} tokens to {num_tokens - start}; both '
        'must be square grids.')
  logging.info('Resizing position embedding grid %dx%d -> %dx%d', old, old, new, new)
  grid = interpolate_grid(grid.reshape(old, old, -1), new).reshape(1, new * new, -1)
  return np.concatenate([tok, grid.astype(posemb.dtype)], axis=1)


def model_json_path(checkpoint: str | os.PathLike) -> str:
  from vision_core import io  # pylint: disable=g-import-not-at-top
  return io.join(io.dirname(io.abspath(os.fspath(checkpoint))), 'model.json')


def model_json(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
  """The `model.json` that `vit_jax.main` writes beside its `model.npz` (model config, class
  names, resolution, test preprocessing), for the checkpoint file `checkpoint`; None when
  there is none. A local path or a URI."""
  from vision_core import io  # pylint: disable=g-import-not-at-top
  path = model_json_path(checkpoint)
  if hf_import.is_hf_save(checkpoint) or not io.exists(path):  # (HF's config.json instead)
    return None
  return io.read_json_object(path, "the model.json vit_jax.main writes")


def input_size(model, params: Mapping[str, Any], *, probe: int = 224) -> int:
  """The input side (px) whose token grid matches `params`' position embeddings.

  `model`'s stride is measured from its parameter shapes at `probe` px (`jax.eval_shape`:
  nothing is computed), so hybrids count too; e.g. 384 for the ImageNet fine-tuned
  ViT-B/16 releases. `probe` when `params` hold no position embeddings.
  """
  import jax  # pylint: disable=g-import-not-at-top
  posemb = params.get('Transformer', {}).get('posembed_input', {}).get('pos_embedding')
  if posemb is None:
    return probe
  extra = 1 if model.classifier in ('token', 'token_unpooled') else 0
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), np.zeros((1, probe, probe, 3), np.float32))['params'])
  probe_grid = math.isqrt(shapes['Transformer']['posembed_input']['pos_embedding'].shape[1] -
                          extra)
  grid = math.isqrt(max(0, int(np.shape(posemb)[1]) - extra))
  return grid * probe // probe_grid if probe_grid else probe


def load_pretrained(*, pretrained_path: str | os.PathLike, init_params: Mapping[str, Any],
                    model_config: Any) -> dict[str, Any]:
  """Loads a pretrained checkpoint for fine-tuning a model whose fresh params are `init_params`.

  - `head` comes from `init_params` (zero-initialised, the fine-tuning class count);
  - `pre_logits` is dropped when `model_config.representation_size` is None (the released
    i21k checkpoints carry one; fine-tuning without it works better);
  - position embeddings are resized to the new resolution (class token kept apart);
  - every other key and shape must match `init_params`, else an error lists each mismatch.
  """
  source = os.fspath(pretrained_path)
  restored = load(pretrained_path)
  if model_config.get('representation_size') is None and 'pre_logits' in restored:
    logging.info('load_pretrained: dropping pre_logits (representation_size is None).')
    del restored['pre_logits']
  restored['head'] = init_params['head']
  transformer = restored.get('Transformer', {})
  posemb = transformer.get('posembed_input', {}).get('pos_embedding')
  expected = init_params.get('Transformer', {}).get('posembed_input', {}).get('pos_embedding')
  if posemb is not None and expected is not None and np.shape(posemb) != np.shape(expected):
    # (Another rank: resize_posemb says so.)
    if np.ndim(posemb) == 3 and np.shape(posemb)[-1] != np.shape(expected)[-1]:
      raise UserInputError(
          f'{source}: pos_embedding width {np.shape(posemb)[-1]} != model width '
          f'{np.shape(expected)[-1]}; is this checkpoint for another model size?')
    has_token = model_config.get('classifier') in ('token', 'token_unpooled')
    transformer['posembed_input']['pos_embedding'] = resize_posemb(
        posemb, np.shape(expected)[1], has_class_token=has_token,
        source=f'{source}: Transformer/posembed_input/pos_embedding')
  npz.check_matches(restored, init_params, source=source)
  return restored


def is_present(path: str | os.PathLike) -> bool:
  """An existing checkpoint file, or a folder holding an HF ViT save: what `load` reads (a
  local path; `check_exists` says what is wrong with one that is not)."""
  path = os.fspath(path)
  return os.path.isfile(path) or (os.path.isdir(path) and hf_import.is_hf_save(path))


def check_exists(path: str | os.PathLike, *, label: str) -> None:
  """Refuses a checkpoint path with no file before anything is read or written; `label` names
  where the path came from (`--checkpoint PATH`, `pretrained=PATH`): the npz reader's
  FileNotFoundError named neither that nor what belongs there."""
  from vision_core import io  # pylint: disable=g-import-not-at-top
  expected = 'an official .npz checkpoint, e.g. ViT-B_16.npz, a model.npz written by '\
      'vit_jax.main, or an HF ViT save_pretrained folder'
  if not io.exists(os.fspath(path)):
    raise UserInputError(f'{label}: no such file ({expected}).')
  # A folder other than an HF save: e.g. a vit_jax.main workdir, whose model.npz is meant.
  if io.isdir(os.fspath(path)) and not hf_import.is_hf_save(path):
    inside = io.join(os.fspath(path), 'model.npz')
    hint = f'; did you mean {inside}?' if io.exists(inside) else f'; expected {expected}.'
    raise UserInputError(f'{label} is a folder{hint}')


def infer_model_name(params: Mapping[str, Any], *, source: str, model_arg: str) -> str:
  """The one zoo model (`vit_jax.configs.models`) whose shapes `params` have.

  Matched on patch size, width, depth, class token and, for hybrids, the ResNet stem's
  units per stage and width. Raises `UserInputError` naming `model_arg` (the flag or field
  that gives the name) when no model or several match.
  """
  from vit_jax.configs.models import MODEL_CONFIGS  # pylint: disable=g-import-not-at-top
  kernel = np.shape(params.get('embedding', {}).get('kernel', ()))
  if len(kernel) != 4:
    raise UserInputError(f'{source}: no embedding/kernel of shape [ph, pw, C, D]; is this a ViT '
                         'checkpoint?')
  layers = sum(k.startswith('encoderblock_') for k in params.get('Transformer', {}))
  cls = 'cls' in params
  # The representation size is not compared: the ImageNet-21k releases carry a pre_logits
  # layer that the zoo configs (made for fine-tuning) leave out; `load_for_inference` takes
  # its width from the file.
  resnet = _resnet_stem_shape(params)
  candidates = [n for n, c in MODEL_CONFIGS.items()
                if _config_resnet(c) == resnet and tuple(c.patches.size) == tuple(kernel[:2])
                and c.hidden_size == kernel[-1] and c.transformer.num_layers == layers
                and (c.classifier == 'token') == cls]
  if len(candidates) != 1:
    found = f'matches {", ".join(candidates)}' if candidates else 'no registered model'
    raise UserInputError(
        f'{source}: no model.json beside it and the model cannot be told from its shapes '
        f'(patch {tuple(kernel[:2])}, width {kernel[-1]}, {layers} layers'
        + (f', ResNet units per stage {resnet[0]}, width x{resnet[1]:g}' if resnet else '')
        + f': {found}); pass {model_arg} (e.g. ViT-B_16).')
  return candidates[0]


def _resnet_stem_shape(params: Mapping[str, Any]):
  """`(units per stage, width factor)` of a hybrid's ResNet stem (`conv_root`, `block{i}/
  unit{j}`, models_resnet.resnet_stem), None for a plain ViT."""
  root = params.get('conv_root', {}).get('kernel')
  if root is None:
    return None
  units, stage = [], 1
  while isinstance(params.get(f'block{stage}'), Mapping):
    units.append(sum(k.startswith('unit') for k in params[f'block{stage}']))
    stage += 1
  return tuple(units), np.shape(root)[-1] / 64


def _config_resnet(config):
  """`_resnet_stem_shape`'s value for a zoo config's parameters."""
  resnet = config.get('resnet')
  if resnet is None:
    return None
  return tuple(resnet.num_layers), float(resnet.width_factor)


def _meta_fields(meta: Mapping[str, Any], source: str):
  """(model config dict, resolution or None, class names or None) of a model.json."""
  config, resolution, names = meta.get('model'), meta.get('resolution'), meta.get('class_names')
  if not isinstance(config, dict):
    raise UserInputError(f'{source}: "model" must be the model config (a JSON object), found '
                         f'{type(config).__name__}.')
  if resolution is not None and (isinstance(resolution, bool) or not isinstance(resolution, int)
                                 or resolution < 1):
    raise UserInputError(f'{source}: "resolution" must be a positive whole number, found '
                         f'{resolution!r}.')
  if names is not None and not isinstance(names, list):
    raise UserInputError(f'{source}: "class_names" must be a list, found '
                         f'{type(names).__name__}.')
  return config, resolution, names


@dataclasses.dataclass(frozen=True)
class Inference:
  """A ViT checkpoint ready to run: `model.apply({'params': params}, x)` with `x` of shape
  `[N, resolution, resolution, 3]` gives `[N, num_classes]` logits (or `[N, D]` pre-logits
  with `return_prelogits=True`; the only output when it was loaded without its head)."""
  model: Any  # models_vit.VisionTransformer
  config: Any  # its ml_collections.ConfigDict (without num_classes)
  params: dict[str, Any]
  resolution: int
  resolution_from: str  # 'argument', 'model.json', 'config.json' (HF) or 'position embeddings'
  model_name: str
  class_names: list[str] | None  # model.json's (or HF's id2label), when it was used
  meta: dict[str, Any] | None  # the model.json, when it was used


def load_for_inference(checkpoint: str | os.PathLike, *, model_name: str | None = None,
                       resolution: int | None = None, head: bool = True,
                       meta: Mapping[str, Any] | None = None,
                       model_arg: str = '--model') -> Inference:
  """Loads a ViT `.npz` (official layout, or `vit_jax.main`'s with its model.json) or an HF
  ViT save to run.

  One policy for every reader (predict, assess, the GAN perceptual term, the study):
  - architecture: the zoo config `model_name` when given (model.json is then ignored), else
    the `model.json` beside the file (`meta`, when the caller has read it already) or an HF
    save's config.json, else the one zoo model its shapes fit (`infer_model_name`); a zoo
    config takes the file's `pre_logits` width as its representation size (the
    ImageNet-21k releases have one);
  - resolution: `resolution` when given, else model.json's (HF: image_size), else what the
    position embeddings hold (`input_size`: e.g. 384 px for the ImageNet fine-tuned B/16);
  - `head`: True needs the classification head (its size gives `num_classes`); False drops
    it and builds a pre-logits model (`num_classes=None`);
  - every key and shape must match the model, else `UserInputError` lists the mismatches.
  `model_arg` is the flag or config field that names a zoo model, for the error messages.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from vit_jax import models_vit  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import models  # pylint: disable=g-import-not-at-top
  source = os.fspath(checkpoint)
  hf = hf_import.load(source) if hf_import.is_hf_save(source) else None
  params = load(source) if hf is None else hf.params
  class_names = None
  json_resolution = None
  if model_name:
    meta = None
    config = models.get_model_config(model_name)
  elif hf is not None:  # Its config.json gives what a model.json would.
    meta = None
    config, class_names, json_resolution = hf.config, hf.class_names, hf.resolution
  else:
    meta = model_json(source) if meta is None else meta
    if meta is not None:
      model_config, json_resolution, class_names = _meta_fields(meta, model_json_path(source))
      config = ml_collections.ConfigDict(model_config)
    else:
      config = models.get_model_config(infer_model_name(params, source=source,
                                                        model_arg=model_arg))
  if meta is None and 'pre_logits' in params and config.get('representation_size') is None:
    # A zoo config (made for fine-tuning, without the layer) for a file that has it (the
    # ImageNet-21k releases: 768 for B/16): run the model the file holds; its head and its
    # features come after pre_logits.
    config = ml_collections.ConfigDict(config.to_dict())
    config.representation_size = int(np.shape(params['pre_logits']['kernel'])[-1])
  name = str((meta or {}).get('model_name') or config.get('model_name') or 'model.json')
  if head:
    if 'head' not in params:
      raise UserInputError(f'{source}: has no classification head (an ImageNet-21k '
                           'pre-training checkpoint without head?); class scores need one.')
    num_classes = int(np.shape(params['head']['bias'])[0])
    if class_names is not None and len(class_names) != num_classes:
      raise UserInputError(f'{source}: model.json lists {len(class_names)} class_names but the '
                           f'head predicts {num_classes} classes.')
  else:
    params.pop('head', None)  # Pre-logits only.
    num_classes = None
  model = models_vit.VisionTransformer(num_classes=num_classes, **config)
  if resolution:
    resolution_from = 'argument'
  elif json_resolution:
    resolution, resolution_from = json_resolution, 'model.json' if hf is None else 'config.json'
  else:
    resolution, resolution_from = input_size(model, params), 'position embeddings'
  resolution = int(resolution)
  patch = int(config['patches']['size'][0])
  if not config.get('resnet') and not config.get('conv_stem') and resolution % patch:
    # The patch embedding would drop the last `resolution % patch` rows and columns.
    raise UserInputError(
        f'{source}: resolution {resolution} ({resolution_from}) is not a multiple of the '
        f'{patch}-pixel patches; use e.g. {max(patch, resolution // patch * patch)}.')
  expected = jax.eval_shape(lambda: model.init(
      jax.random.key(0), np.zeros((1, resolution, resolution, 3), np.float32))['params'])
  npz.check_matches(params, expected, source=f'{source} (as {name}, {resolution} px)')
  return Inference(model=model, config=config, params=params, resolution=resolution,
                   resolution_from=resolution_from, model_name=name, class_names=class_names,
                   meta=dict(meta) if meta is not None else None)
