"""A ViT checkpoint of ours (or an official one) as an HF transformers save.

  python -m vit_jax.hf_export --checkpoint runs/b16/model.npz --out b16-hf
  # then, with PyTorch: transformers.ViTForImageClassification.from_pretrained('b16-hf')

Writes the folder `save_pretrained` would: `config.json` (ViTConfig: the sizes, the GELU
flavour, layer_norm_eps 1e-6 as ours, image_size, id2label from the model.json class names),
`model.safetensors` (float32) and `preprocessor_config.json` (resize to the resolution, then
mean = std = 0.5: the [-1, 1] inputs of every model here). The tensors are `vit_jax.hf_import`'s
mapping run backwards, so HF gives this model's logits, and importing the folder gives back
the same parameters. HF's ViTForImageClassification is a plain ViT that classifies from the
class token: hybrids, 'gap' models and models with a pre_logits layer are refused by name.
The folder appears whole or not at all; an existing one is replaced only with `--force`,
and only when it holds an earlier export and nothing else.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Mapping

import numpy as np

from vision_core import fused_norm, hf_io, io
from vision_core.errors import UserInputError, cli_errors

# Ours -> HF's hidden_act (both GELUs are HF activations).
_HIDDEN_ACT = {False: 'gelu', True: 'gelu_pytorch_tanh'}
LAYER_NORM_EPS = fused_norm.EPS  # every LayerNorm of our ViT
EXPORT_FILES = ('config.json', 'model.safetensors', 'preprocessor_config.json')


def hf_config(config: Mapping[str, Any], *, num_classes: int, resolution: int,
              class_names: list[str] | None) -> dict[str, Any]:
  """ViTConfig fields for our model `config` (a VisionTransformer config)."""
  problems = []
  if config.get('resnet') or config.get('conv_stem'):
    problems.append('it is a hybrid (a ResNet or conv stem before the patches)')
  if config.get('classifier', 'token') != 'token':
    problems.append(f'classifier is {config.get("classifier")!r} (HF classifies from the class '
                    "token: 'token')")
  if config.get('representation_size'):
    problems.append('it has a pre_logits layer (representation_size '
                    f'{config.get("representation_size")})')
  patch = tuple(config['patches']['size'])
  if patch[0] != patch[1]:
    problems.append(f'its patches are {patch[0]}x{patch[1]} (HF\'s are square)')
  if problems:
    raise UserInputError('HF\'s ViTForImageClassification cannot hold this model: '
                         + '; '.join(problems) + '.')
  transformer = config['transformer']
  names = class_names or [str(i) for i in range(num_classes)]
  return {
      'architectures': ['ViTForImageClassification'],
      'model_type': 'vit',
      'hidden_size': int(config['hidden_size']),
      'num_hidden_layers': int(transformer['num_layers']),
      'num_attention_heads': int(transformer['num_heads']),
      'intermediate_size': int(transformer['mlp_dim']),
      'hidden_act': _HIDDEN_ACT[bool(config.get('gelu_approximate', True))],
      'hidden_dropout_prob': float(transformer.get('dropout_rate', 0.0)),
      'attention_probs_dropout_prob': float(transformer.get('attention_dropout_rate', 0.0)),
      'layer_norm_eps': LAYER_NORM_EPS,
      'image_size': int(resolution),
      'patch_size': int(patch[0]),
      'num_channels': int(config.get('channels', 3)),
      'qkv_bias': True,
      'encoder_stride': int(patch[0]),
      'id2label': {str(i): name for i, name in enumerate(names)},
      'label2id': {name: i for i, name in enumerate(names)},
  }


def hf_tensors(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Our tree -> ViTForImageClassification's state dict (numpy, float32)."""
  f32 = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))
  out = {
      'vit.embeddings.cls_token': f32(params['cls']),
      'vit.embeddings.position_embeddings': f32(
          params['Transformer']['posembed_input']['pos_embedding']),
      'vit.embeddings.patch_embeddings.projection.weight': f32(
          np.transpose(params['embedding']['kernel'], (3, 2, 0, 1))),
      'vit.embeddings.patch_embeddings.projection.bias': f32(params['embedding']['bias']),
      'vit.layernorm.weight': f32(params['Transformer']['encoder_norm']['scale']),
      'vit.layernorm.bias': f32(params['Transformer']['encoder_norm']['bias']),
      'classifier.weight': f32(np.asarray(params['head']['kernel']).T),
      'classifier.bias': f32(params['head']['bias']),
  }
  blocks = sorted((k for k in params['Transformer'] if k.startswith('encoderblock_')),
                  key=lambda k: int(k.split('_')[-1]))
  for i, name in enumerate(blocks):
    block, prefix = params['Transformer'][name], f'vit.encoder.layer.{i}.'
    attention = block['MultiHeadDotProductAttention_0']
    for ours, theirs in (('LayerNorm_0', 'layernorm_before'), ('LayerNorm_1', 'layernorm_after')):
      out[f'{prefix}{theirs}.weight'] = f32(block[ours]['scale'])
      out[f'{prefix}{theirs}.bias'] = f32(block[ours]['bias'])
    for part in ('query', 'key', 'value'):
      kernel = np.asarray(attention[part]['kernel'])  # [D, H, D/H]
      out[f'{prefix}attention.attention.{part}.weight'] = f32(
          kernel.reshape(kernel.shape[0], -1).T)
      out[f'{prefix}attention.attention.{part}.bias'] = f32(
          np.reshape(attention[part]['bias'], -1))
    kernel = np.asarray(attention['out']['kernel'])  # [H, D/H, D]
    out[f'{prefix}attention.output.dense.weight'] = f32(kernel.reshape(-1, kernel.shape[-1]).T)
    out[f'{prefix}attention.output.dense.bias'] = f32(attention['out']['bias'])
    for ours, theirs in (('Dense_0', 'intermediate.dense'), ('Dense_1', 'output.dense')):
      out[f'{prefix}{theirs}.weight'] = f32(np.asarray(block['MlpBlock_0'][ours]['kernel']).T)
      out[f'{prefix}{theirs}.bias'] = f32(block['MlpBlock_0'][ours]['bias'])
  return out


def preprocessor_config(resolution: int) -> dict[str, Any]:
  """ViTImageProcessor: bilinear resize to the resolution, pixels / 255, then (x - 0.5) / 0.5,
  which is [-1, 1] (what `vit_jax.predict` does by default)."""
  return {'image_processor_type': 'ViTImageProcessor', 'do_resize': True,
          'size': {'height': int(resolution), 'width': int(resolution)}, 'resample': 2,
          'do_rescale': True, 'rescale_factor': 1 / 255, 'do_normalize': True,
          'image_mean': [0.5, 0.5, 0.5], 'image_std': [0.5, 0.5, 0.5]}


def export(loaded, out: str, *, force: bool = False) -> None:
  """Writes `loaded` (a `vit_jax.checkpoint.Inference`, with its head) to the folder `out`."""
  num_classes = int(np.shape(loaded.params['head']['bias'])[0])
  config = hf_config(loaded.config, num_classes=num_classes, resolution=loaded.resolution,
                     class_names=loaded.class_names)
  hf_io.write_save(out, hf_tensors(loaded.params), {
      'config.json': config, 'preprocessor_config.json': preprocessor_config(loaded.resolution)},
                   force=force)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='vit_jax.hf_export', description=__doc__.split('\n')[0])
  parser.add_argument('--checkpoint', required=True, type=io.path_arg,
                      help='.npz (ours with its model.json, or official with --model)')
  parser.add_argument('--out', required=True, type=io.path_arg, help='the folder to write')
  parser.add_argument('--model', help='zoo name, e.g. ViT-B_16 (default: from model.json)')
  parser.add_argument('--force', action='store_true', help='replace an earlier export')
  args = parser.parse_args(argv)
  with cli_errors('vit_jax.hf_export'):
    from vit_jax import checkpoint  # pylint: disable=g-import-not-at-top
    checkpoint.check_exists(args.checkpoint, label=f'--checkpoint {args.checkpoint}')
    hf_io.check_export_folder(os.path.abspath(args.out), EXPORT_FILES, force=args.force)
    # The resolution is the one the position embeddings hold (or model.json's).
    loaded = checkpoint.load_for_inference(args.checkpoint, model_name=args.model)
    export(loaded, args.out, force=args.force)
    print(f'wrote {args.out} ({loaded.model_name}, {loaded.resolution} px, '
          f'{len(loaded.params["head"]["bias"])} classes): load it with '
          f'transformers.ViTForImageClassification.from_pretrained({args.out!r})',
          file=sys.stderr)


if __name__ == '__main__':
  main()
