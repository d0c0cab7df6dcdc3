"""An Image GPT of ours (or OpenAI's) as an HF transformers save.

  python -m igpt_jax.hf_export --params runs/igpt/params.npz --out igpt-hf
  # then, with PyTorch: transformers.ImageGPTForCausalImageModeling.from_pretrained('igpt-hf')

`--params` is anything `igpt_jax.checkpoint.load` reads (our `.npz` or workdir, OpenAI's TF
checkpoint, an HF save). Writes `config.json` (ImageGPTConfig: the sizes, quick_gelu,
layer_norm_epsilon as ours) and `model.safetensors` in HF's layout: `transformer.wte.weight`
with the start-of-sequence embedding as its last row, q|k|v in one Conv1D `[D, 3D]` with
zero biases (ours have none), `lm_head.weight`, and `score.weight` when the model has a
classification head (HF's ImageGPTForImageClassification reads it; the causal-LM class
ignores it). The inverse of `checkpoint.hf_to_flat`, so importing the folder gives back the
same parameters. The BERT-objective models (no start token) have no HF counterpart and are
refused. The folder is written whole or not at all (`vision_core.hf_io.write_save`).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping

import numpy as np

from igpt_jax import model as igpt_model
from vision_core import hf_io, io, npz
from vision_core.errors import UserInputError, cli_errors

EXPORT_FILES = ('config.json', 'model.safetensors')


def hf_config(model: igpt_model.ImageGPT) -> dict[str, Any]:
  """ImageGPTConfig fields for `model` (HF's vocabulary has the start token as its last)."""
  if model.bert:
    raise UserInputError('a BERT-objective Image GPT (no start-of-sequence token) has no HF '
                         'counterpart: HF\'s ImageGPT is the autoregressive model.')
  config = {
      'architectures': ['ImageGPTForCausalImageModeling'], 'model_type': 'imagegpt',
      'vocab_size': int(model.vocab_size) + 1, 'n_positions': int(model.n_ctx),
      'n_embd': int(model.width), 'n_layer': int(model.num_layers),
      'n_head': int(model.num_heads), 'activation_function': 'quick_gelu',
      'layer_norm_epsilon': igpt_model.NORM_EPSILON, 'scale_attn_weights': True,
      'scale_attn_by_inverse_layer_idx': False, 'reorder_and_upcast_attn': False,
      'resid_pdrop': 0.0, 'embd_pdrop': 0.0, 'attn_pdrop': 0.0,
  }
  if model.num_classes:
    config['num_labels'] = int(model.num_classes)
  return config


def hf_tensors(params: Mapping[str, Any], model: igpt_model.ImageGPT) -> dict[str, np.ndarray]:
  """Our tree -> HF ImageGPT's state dict (numpy, float32)."""
  flat = {k: np.asarray(v, np.float32) for k, v in npz.flatten(params).items()}
  d = model.width
  out = {'transformer.wte.weight': np.concatenate([flat['wte'], flat['sos'][None]]),
         'transformer.wpe.weight': flat['wpe'], 'transformer.ln_f.weight': flat['ln_f/g'],
         'lm_head.weight': flat['wtet']}
  if 'clf/wclf' in flat:
    out['score.weight'] = flat['clf/wclf']
  for i in range(model.num_layers):
    ours, theirs = f'h{i}/', f'transformer.h.{i}.'
    # Conv1D weights are [in, out]; our q/k/v [H, D/H, D] flatten to [out = (head, e), in].
    qkv = [flat[f'{ours}attn/{n}_proj'].reshape(d, d).T for n in 'qkv']
    out.update({
        f'{theirs}ln_1.weight': flat[f'{ours}ln_1/g'],
        f'{theirs}ln_2.weight': flat[f'{ours}ln_2/g'],
        f'{theirs}attn.c_attn.weight': np.concatenate(qkv, axis=1),
        f'{theirs}attn.c_attn.bias': np.zeros(3 * d, np.float32),
        f'{theirs}attn.c_proj.weight': flat[f'{ours}attn/c_proj'].reshape(d, d),
        f'{theirs}attn.c_proj.bias': np.zeros(d, np.float32),
        f'{theirs}mlp.c_fc.weight': flat[f'{ours}mlp/c_fc/w'],
        f'{theirs}mlp.c_fc.bias': np.zeros(flat[f'{ours}mlp/c_fc/w'].shape[1], np.float32),
        f'{theirs}mlp.c_proj.weight': flat[f'{ours}mlp/c_proj/w'],
        f'{theirs}mlp.c_proj.bias': np.zeros(d, np.float32)})
  return {k: np.ascontiguousarray(v) for k, v in out.items()}


def export(params, model: igpt_model.ImageGPT, out: str, *, force: bool = False) -> None:
  """Writes `params` of `model` to the folder `out` as an HF save."""
  config = hf_config(model)
  hf_io.write_save(out, hf_tensors(params, model), {'config.json': config}, force=force)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='igpt_jax.hf_export', description=__doc__.split('\n')[0])
  parser.add_argument('--params', required=True, type=io.path_arg,
                      help='our .npz or workdir, OpenAI\'s TF checkpoint, or an HF save')
  parser.add_argument('--out', required=True, type=io.path_arg, help='the folder to write')
  parser.add_argument('--force', action='store_true', help='replace an earlier export')
  args = parser.parse_args(argv)
  with cli_errors('igpt_jax.hf_export'):
    from igpt_jax import checkpoint  # pylint: disable=g-import-not-at-top
    hf_io.check_export_folder(os.path.abspath(args.out), EXPORT_FILES, force=args.force)
    params, model = checkpoint.load(args.params)
    export(params, model, args.out, force=args.force)
    print(f'wrote {args.out} (width {model.width}, {model.num_layers} layers, '
          f'{model.num_heads} heads): load it with '
          f'transformers.ImageGPTForCausalImageModeling.from_pretrained({args.out!r})',
          file=sys.stderr)


if __name__ == '__main__':
  main()
