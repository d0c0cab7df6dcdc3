"""Image GPT weights in and out: OpenAI's TF checkpoints, HF saves, our own `.npz`.

    params, model = checkpoint.load('igpt-s/model.ckpt-1000000')        # OpenAI (TF bundle)
    params, model = checkpoint.load('imagegpt-small/model.safetensors')  # HF transformers
    params, model = checkpoint.load('imagegpt-small/')  # HF: safetensors or pytorch_model.bin
    params, model = checkpoint.load('run/params.npz')                    # ours

Every loader returns our parameter tree (see `igpt_jax.model`) and an `ImageGPT` whose sizes
are read from the weights (or checked against the `model` you pass). A missing, extra or
mis-shaped variable is a `UserInputError` listing every such variable.

HF's `ImageGPTModel` and `ImageGPTForImageClassification` saves have no language-model head
(`lm_head.weight`, our `wtet`). `load(..., need_lm_head=False)` accepts them with a zero
`wtet` (the model's own initial value) for the jobs that never read the logits (the probe,
fine-tuning); by default such a file is a one-line `UserInputError` naming it.

Layouts, for the same weights:
  OpenAI  `model/h{i}/attn/q_proj [H, D/H, D]`, `model/wte [512, D]`, `model/sos [D]`,
          `model/wtet [512, D]`, `model/clf/wclf [C, D]`; Adam slots and global_step skipped.
  HF      `transformer.wte.weight [513, D]` (row 512 is sos), `transformer.h.{i}.attn.c_attn
          .weight [D, 3D]` (Conv1D, [in, out]; q|k|v, heads minor in each), `lm_head.weight
          [512, D]`, `score.weight [C, D]`; zero Conv1D biases; n_head from config.json.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Optional

import numpy as np

from igpt_jax import model as igpt_model
from igpt_jax import tf_bundle
from vision_core import hf_io, npz
from vision_core.errors import UserInputError

_OPTIMIZER_PARTS = {'Adam', 'Adam_1', 'adam_m', 'adam_v', 'AdamWeightDecayOptimizer',
                    'AdamWeightDecayOptimizer_1', 'Momentum', 'ExponentialMovingAverage'}
_OPTIMIZER_NAMES = {'global_step', '_step', 'beta1_power', 'beta2_power'}
HF_SHARD_INDEX = hf_io.SHARD_INDEX
HF_WEIGHT_FILES = hf_io.WEIGHT_FILES  # in the order `from_pretrained` prefers them
_BIN_HINT = (" Or save it as safetensors elsewhere: ImageGPTModel.from_pretrained(d)"
             ".save_pretrained(d, safe_serialization=True).")
_HF_BUFFERS = re.compile(r'h\.\d+\.attn\.(bias|masked_bias)$')


def is_optimizer_state(name: str) -> bool:
  """True for the Adam slots, step counters and other non-model variables of a TF run."""
  parts = name.split('/')
  return bool(_OPTIMIZER_PARTS.intersection(parts)) or parts[-1] in _OPTIMIZER_NAMES


# The variables `model_from_params` reads sizes from: their rank and layout.
_SIZE_LAYOUTS = {'wte': (2, '[vocab, D]'), 'wpe': (2, '[n_ctx, D]'),
                 'h0/attn/q_proj': (3, '[H, D/H, D]'), 'clf/wclf': (2, '[classes, D]')}


def model_from_params(flat: Mapping[str, Any], *, source: str,
                      num_heads: Optional[int] = None, dtype=None) -> igpt_model.ImageGPT:
  """An `ImageGPT` with the sizes of flat parameters (`h0/attn/q_proj` gives the heads)."""
  needed = ['wte', 'wpe'] + ([] if num_heads else ['h0/attn/q_proj'])
  missing = [k for k in needed if k not in flat]
  if missing:
    raise UserInputError(f'{source}: cannot tell the model size; missing {", ".join(missing)} '
                         f'(found {len(flat)} variables: {", ".join(sorted(flat)[:8])}...).')
  bad = [f'{k} has shape {np.shape(flat[k])}, expected {layout}'
         for k, (rank, layout) in _SIZE_LAYOUTS.items() if k in flat and np.ndim(flat[k]) != rank]
  if bad:
    raise UserInputError(f'{source}: cannot tell the model size: {"; ".join(bad)}.')
  layers = {int(m.group(1)) for k in flat if (m := re.match(r'h(\d+)/', k))}
  kwargs = dict(
      width=int(np.shape(flat['wte'])[1]),
      num_heads=int(num_heads or np.shape(flat['h0/attn/q_proj'])[0]),
      num_layers=max(layers) + 1 if layers else 0,
      vocab_size=int(np.shape(flat['wte'])[0]), n_ctx=int(np.shape(flat['wpe'])[0]),
      num_classes=int(np.shape(flat['clf/wclf'])[0]) if 'clf/wclf' in flat else 0,
      bert='sos' not in flat)
  if dtype is not None:
    kwargs['dtype'] = dtype
  if kwargs['num_heads'] < 1:
    raise UserInputError(f'{source}: h0/attn/q_proj has shape {np.shape(flat["h0/attn/q_proj"])}'
                         ', expected [H, D/H, D] with at least one head.')
  if kwargs['width'] % kwargs['num_heads']:
    raise UserInputError(f'{source}: width {kwargs["width"]} is not divisible by '
                         f'{kwargs["num_heads"]} heads.')
  return igpt_model.ImageGPT(**kwargs)


def check_params(flat: Mapping[str, Any], model: igpt_model.ImageGPT, *, source: str) -> dict:
  """Checks flat parameters against `model`; returns them as a float32 tree."""
  expected = igpt_model.param_shapes(model)
  tree = npz.unflatten({k: np.asarray(v) for k, v in flat.items()})
  npz.check_matches(tree, expected, source=source)
  return npz.unflatten({k: np.asarray(v, np.float32) for k, v in flat.items()})


def no_lm_head_message(source: str) -> str:
  """The one-line error for weights without `wtet` where the logits are needed."""
  return (f'{source}: has no language-model head (HF lm_head.weight, our wtet): an HF '
          'ImageGPTModel or ImageGPTForImageClassification save? Sampling, bits/dim and '
          'generative training need the head (ImageGPTForCausalImageModeling); the probe '
          'and fine-tuning (objective=finetune) can use these weights.')


def _finish(flat, model, source, num_heads=None, need_lm_head=True):
  headless = 'wtet' not in flat and 'wte' in flat
  if headless:
    # Zero is the model's initial wtet: fine-tuning then learns the head from scratch, and
    # the probe never reads the logits.
    flat = {**flat, 'wtet': np.zeros(np.shape(flat['wte']), np.float32)}
  if model is None:
    model = model_from_params(flat, source=source, num_heads=num_heads)
  params = check_params(flat, model, source=source)  # Any other problem: all listed first.
  if headless and need_lm_head:
    raise UserInputError(no_lm_head_message(source))
  return params, model


def load_openai_tf(path: str | os.PathLike, *, model: Optional[igpt_model.ImageGPT] = None,
                   verify_checksums: bool = True, need_lm_head: bool = True):
  """OpenAI's released checkpoint (`PREFIX`, `PREFIX.index` or its directory).

  Each tensor's crc32c is checked (`tf_bundle.read_bundle`); `verify_checksums=False` skips
  that, for a checkpoint already checked.

  Returns:
    `(params, model)`.
  """
  prefix = tf_bundle.resolve_prefix(path)
  source = prefix + '.index'
  arrays = tf_bundle.read_bundle(prefix, skip=is_optimizer_state,
                                 verify_checksums=verify_checksums)
  flat = {}
  for name, value in arrays.items():
    if not name.startswith('model/'):
      raise UserInputError(f'{source}: variable {name!r} is outside the release\'s '
                           '"model/" scope; not an Image GPT checkpoint?')
    flat[name[len('model/'):]] = value
  return _finish(flat, model, source, need_lm_head=need_lm_head)


def openai_names(params) -> dict[str, np.ndarray]:
  """Our tree -> OpenAI's TF variable names (`model/...`), e.g. to write a TF checkpoint."""
  return {'model/' + k: np.asarray(v) for k, v in npz.flatten(params).items()}


# The integer fields of HF's config.json read here: n_head for the heads, the others to
# compare with the weights' shapes.
HF_INT_FIELDS = ('n_head', 'n_layer', 'n_embd', 'vocab_size', 'n_positions')


def _hf_config(path: str) -> dict:
  config = hf_io.read_config(path, 'ImageGPTConfig')
  hf_io.check_positive_ints(config, HF_INT_FIELDS, source=hf_io.config_path(path))
  return config


# ImageGPTConfig fields that change HF's forward pass, with the values that give the
# release's (and our) model; a config with others would load here and give other logits.
_HF_FORWARD = {'activation_function': 'quick_gelu', 'layer_norm_epsilon': igpt_model.NORM_EPSILON,
               'scale_attn_weights': True, 'scale_attn_by_inverse_layer_idx': False}


def check_hf_config(config: Mapping[str, Any], *, source: str) -> None:
  """Raises `UserInputError` if HF's config.json asks for a forward pass other than ours."""
  bad = [f'{k}={config[k]!r} (expected {v!r})' for k, v in _HF_FORWARD.items()
         if k in config and config[k] != v]
  if bad:
    raise UserInputError(f'{source}: {", ".join(bad)}; Image GPT here computes the release\'s '
                         'forward pass only, so these weights would give other logits.')


def check_hf_config_sizes(config: Mapping[str, Any], flat: Mapping[str, Any], *,
                          config_path: str, weights_path: str) -> None:
  """Raises `UserInputError` where config.json's sizes disagree with the weights (in our
  flat names). n_head is not among them: the shapes only show that it divides n_embd."""
  layers = {int(m.group(1)) for k in flat if (m := re.match(r'h(\d+)/', k))}
  shown = {'n_layer': (max(layers) + 1 if layers else 0, 'the weights hold {} layers')}
  if np.ndim(flat.get('wte')) == 2:
    rows, width = np.shape(flat['wte'])
    shown['n_embd'] = (width, 'the weights are {} wide')
    shown['vocab_size'] = (rows + 1, 'wte.weight has {} rows')  # HF's has sos as its last.
  if np.ndim(flat.get('wpe')) == 2:
    shown['n_positions'] = (np.shape(flat['wpe'])[0], 'wpe.weight has {} rows')
  bad = [f'{key}={config[key]} but {said.format(found)}' for key, (found, said) in shown.items()
         if key in config and config[key] != found]
  if bad:
    raise UserInputError(f'{config_path} does not describe the weights in {weights_path}: '
                         f'{"; ".join(bad)}.')


def hf_to_flat(state: Mapping[str, np.ndarray], *, num_heads: int, source: str) -> dict:
  """HF ImageGPT tensors (`transformer.` prefix optional) -> our flat names."""
  state = {k[len('transformer.'):] if k.startswith('transformer.') else k: v
           for k, v in state.items()}
  flat, problems = {}, []
  for key, value in sorted(state.items()):
    value = np.asarray(value)
    if _HF_BUFFERS.search(key):
      continue  # The causal-mask buffers of older HF versions, not weights.
    if key.endswith('.bias'):
      if np.any(value != 0):
        problems.append(f'  bias     {key}: nonzero, but Image GPT has no biases')
      continue
    m = re.fullmatch(r'h\.(\d+)\.(.+)\.weight', key)
    if key == 'wte.weight':
      if value.ndim != 2 or value.shape[0] < 2:
        problems.append(f'  shape    {key}: expected [vocab + 1, D], found {value.shape}')
        continue
      flat['wte'], flat['sos'] = value[:-1], value[-1]
    elif key in ('wpe.weight', 'lm_head.weight', 'ln_f.weight', 'score.weight'):
      flat[{'wpe.weight': 'wpe', 'lm_head.weight': 'wtet', 'ln_f.weight': 'ln_f/g',
            'score.weight': 'clf/wclf'}[key]] = value
    elif m and m.group(2) in ('ln_1', 'ln_2'):
      flat[f'h{m.group(1)}/{m.group(2)}/g'] = value
    elif m and m.group(2) in ('mlp.c_fc', 'mlp.c_proj'):
      flat[f'h{m.group(1)}/{m.group(2).replace(".", "/")}/w'] = value
    elif m and m.group(2) in ('attn.c_attn', 'attn.c_proj'):
      d = value.shape[0] if value.ndim == 2 else 0
      if value.ndim != 2 or d % num_heads or value.shape[1] != (3 * d if 'c_attn' in key else d):
        problems.append(f'  shape    {key}: expected [D, {"3D" if "c_attn" in key else "D"}] '
                        f'with D divisible by n_head={num_heads}, found {value.shape}')
        continue
      split = lambda w: w.reshape(num_heads, d // num_heads, d)
      if 'c_proj' in key:  # [in = (head, e), out] is already [H, D/H, D] once split.
        flat[f'h{m.group(1)}/attn/c_proj'] = split(value)
      else:
        for i, name in enumerate(('q_proj', 'k_proj', 'v_proj')):
          flat[f'h{m.group(1)}/attn/{name}'] = split(value[:, i * d:(i + 1) * d].T)
    else:
      problems.append(f'  extra    {key}: shape {value.shape} is not an ImageGPT weight')
  if problems:
    raise UserInputError(f'{source}: not a loadable ImageGPT checkpoint ({len(problems)} '
                         'problems):\n' + '\n'.join(problems))
  return flat


def load_hf(path: str | os.PathLike, *, model: Optional[igpt_model.ImageGPT] = None,
            num_heads: Optional[int] = None, need_lm_head: bool = True):
  """HF transformers' ImageGPT save: a weights file (`.safetensors`, `pytorch_model.bin`, or a
  sharded save's `*.index.json`), or a directory holding one of `HF_WEIGHT_FILES` (the first
  present, as `from_pretrained` picks).

  The number of heads comes from `num_heads`, `model`, or `config.json` beside the file.

  Returns:
    `(params, model)`.
  """
  path = hf_io.weights_file(path)
  config = _hf_config(path)
  check_hf_config(config, source=hf_io.config_path(path))
  num_heads = num_heads or (model.num_heads if model else config.get('n_head'))
  if not num_heads:
    raise UserInputError(f'{path}: the number of heads is not stored in the weights; put HF\'s '
                         'config.json beside the file or pass num_heads.')
  state = hf_io.read_weights(path, hint=_BIN_HINT)
  flat = hf_to_flat(state, num_heads=num_heads, source=path)
  check_hf_config_sizes(config, flat, weights_path=path,
                        config_path=hf_io.config_path(path))
  return _finish(flat, model, path, num_heads=num_heads, need_lm_head=need_lm_head)


def load(path: str | os.PathLike, *, model: Optional[igpt_model.ImageGPT] = None,
         num_heads: Optional[int] = None, need_lm_head: bool = True):
  """Any of the three formats, by file name: `.npz` (or a training workdir holding its
  `params.npz`), an HF save (`.safetensors`, `pytorch_model.bin`, a sharded save's
  `.index.json`, or a directory holding one: `load_hf`), otherwise a TF checkpoint. Returns
  `(params, model)`. `need_lm_head=False`: weights without the LM head load (see above)."""
  path = os.fspath(path)
  kwargs = dict(model=model, need_lm_head=need_lm_head)
  if path.endswith('.npz'):
    flat = npz.load_flat(path)
    return _finish(flat, model, path, num_heads=num_heads, need_lm_head=need_lm_head)
  if hf_io.is_save(path):
    return load_hf(path, num_heads=num_heads, **kwargs)
  ours = os.path.join(path, 'params.npz')
  if os.path.isdir(path) and os.path.isfile(ours) and not any(
      name.endswith('.index') for name in os.listdir(path)):
    # A training workdir: its exported parameters (the checkpoints/ beside them hold the
    # optimizer state too, in orbax's format).
    return _finish(npz.load_flat(ours), model, ours, num_heads=num_heads,
                   need_lm_head=need_lm_head)
  return load_openai_tf(path, **kwargs)


def save(path: str | os.PathLike, params, *, overwrite: bool = False) -> None:
  """Our `.npz` (flat `h0/attn/q_proj` names, OpenAI's without `model/`), atomically."""
  npz.save_flat(path, npz.flatten(params), overwrite=overwrite)
