"""Converts a pytorch_GAN_zoo Progressive GAN generator (`.pth`) into our `.npz` checkpoint.

    python -m gan_jax.pgan_import celebaHQ_512.pth pgan_celebahq512.npz [--which avgG]

pytorch_GAN_zoo saves `{'config': ..., 'netG': state, 'netD': state, 'avgG': state}`
(`BaseGAN.save`); a bare generator state dict is accepted too. Generator keys are
`formatLayer.module.weight`, `groupScale0.0.module.weight`, `scaleLayers.{i}.{j}.module.weight`,
`toRGBLayers.{i}.module.weight` (and `.bias`); older releases leave out the inner
`.module`, and `nn.DataParallel` adds a leading `module.`: all are accepted. Channel depths
come from the config (`depthScale0`, `depthOtherScales`, `dimLatentVector`) when present,
otherwise from the weight shapes, and the two are checked against each other. A checkpoint
saved during a scale transition keeps its blending factor (config `alpha`), as the zoo's
`ProgressiveGAN.getNetG` does.

torch is only needed here (the `torch` extra) and reads with `weights_only=True`: no
arbitrary code runs. The conversion happens once; everything else reads the `.npz`.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Mapping

import numpy as np

from gan_jax import generators
from vision_core import torch_io
from vision_core.errors import UserInputError, cli_errors
from vision_core.io import path_arg

_KEY = re.compile(r'^(formatLayer|groupScale0\.0|scaleLayers\.(\d+)\.(\d+)|toRGBLayers\.(\d+))'
                  r'\.(weight|bias)$')


class _ZooConfig:
  """Stand-in for pytorch_GAN_zoo's `models.utils.config.BaseConfig` (a plain attribute bag).

  Registered as a safe global under that name, so `weights_only=True` can read the
  `config` entry of a full checkpoint without importing pytorch_GAN_zoo.
  """

  def __setstate__(self, state):
    self.__dict__.update(state)


def read_pth(path: str | os.PathLike) -> Any:
  """The checkpoint in `path` as numpy (`vision_core.torch_io`: weights only), its pytorch_GAN_zoo
  config object as a dict."""
  return torch_io.read(path, safe_globals=[(_ZooConfig, 'models.utils.config.BaseConfig')])


def _generator_state(obj: Mapping[str, Any], which: str, source: str):
  """(state dict, config or None) from a full checkpoint or a bare state dict."""
  if which in obj and isinstance(obj[which], Mapping):
    return obj[which], obj.get('config')
  if 'netG' in obj and isinstance(obj['netG'], Mapping):
    return obj['netG'], obj.get('config')
  if any(_canonical(k) for k in obj):
    return obj, None
  raise UserInputError(
      f'{source}: neither a pytorch_GAN_zoo checkpoint (keys {which!r}/netG) nor a PGAN '
      f'generator state dict; top-level keys: {sorted(map(str, obj))[:10]}.')


def _canonical(key: str) -> str | None:
  """`module.scaleLayers.0.1.module.weight` -> `scaleLayers.0.1.weight`; None if unknown."""
  key = key[len('module.'):] if key.startswith('module.') else key
  key = key.replace('.module.', '.')
  return key if _KEY.match(key) else None


def convert_state_dict(state: Mapping[str, Any], config: Mapping[str, Any] | None = None,
                       *, source: str = 'state dict'):
  """pytorch_GAN_zoo GNet state dict -> (our generator config, flax params).

  Linear weights `[out, in]` become kernels `[in, out]` (the output order stays PyTorch's
  channel-major one, which the module reshapes to [C, 4, 4]); conv weights `[O, I, kh, kw]`
  become `[kh, kw, I, O]`.
  """
  weights, unknown = {}, []
  for key, value in state.items():
    canonical = _canonical(str(key))
    if canonical is None:
      unknown.append(str(key))
    elif canonical in weights:
      raise UserInputError(f'{source}: two keys name {canonical} (one is {key!r}).')
    else:
      weights[canonical] = np.asarray(value, np.float32)
      ndim = 1 if canonical.endswith('.bias') else 2 if canonical.startswith('format') else 4
      if weights[canonical].ndim != ndim:
        raise UserInputError(f'{source}: {key} has shape {weights[canonical].shape}, '
                             f'expected {ndim} dimensions.')
  if 'formatLayer.weight' not in weights:
    raise UserInputError(f'{source}: no formatLayer.weight (or .module.weight) key; '
                         f'found {sorted(weights) or sorted(map(str, state))[:10]}.')
  if unknown:  # Dropping them would build a different network without a word.
    raise UserInputError(f'{source}: {len(unknown)} key(s) that are not part of a '
                         f'pytorch_GAN_zoo GNet: {sorted(unknown)[:5]}.')
  n_scales = 1 + max([int(m.group(2)) + 1 for m in map(_KEY.match, weights)
                      if m.group(2) is not None] + [0])
  fmt = weights['formatLayer.weight']
  depth0, dim_latent = fmt.shape[0] // 16, fmt.shape[1]
  depths = [weights[f'scaleLayers.{i}.0.weight'].shape[0] if f'scaleLayers.{i}.0.weight'
            in weights else None for i in range(n_scales - 1)]
  if None in depths:
    raise UserInputError(f'{source}: scaleLayers.{depths.index(None)}.0.weight is missing.')
  dim_output = weights['toRGBLayers.0.weight'].shape[0] if 'toRGBLayers.0.weight' in \
      weights else 3
  ours = {'family': 'pgan', 'dim_latent': int(dim_latent), 'depth_scale0': int(depth0),
          'depth_other_scales': [int(d) for d in depths], 'dim_output': int(dim_output)}
  if config:
    latent_key = next((k for k in ('latentVectorDim', 'dimLatentVector', 'noiseVectorDim')
                       if config.get(k) is not None), 'latentVectorDim')
    from_config = {'dim_latent': latent_key, 'depth_scale0': 'depthScale0',
                   'depth_other_scales': 'depthOtherScales', 'dim_output': 'dimOutput'}
    for field, zoo_key in from_config.items():
      value = config.get(zoo_key)
      if value is None:
        continue
      try:
        value = [int(v) for v in value] if field == 'depth_other_scales' else int(value)
      except (TypeError, ValueError):
        kind = 'a list of integers' if field == 'depth_other_scales' else 'an integer'
        raise UserInputError(f'{source}: config {zoo_key}={value!r} is not {kind}.') from None
      if value != ours[field]:
        raise UserInputError(f'{source}: config says {zoo_key}={value}, but the weights '
                             f'have {ours[field]}.')
    if config.get('leakyReluLeak') is not None:
      ours['leaky_relu_leak'] = float(config['leakyReluLeak'])
    if config.get('perChannelNormalization') is not None:
      ours['normalization'] = bool(config['perChannelNormalization'])
    if config.get('alpha') and depths:  # GNet blends only once a scale was added.
      ours['alpha'] = float(config['alpha'])
  params = {}
  for key, value in weights.items():
    layer, kind = key.rsplit('.', 1)
    name = layer.replace('.', '_')
    if kind == 'weight':
      value = value.T if value.ndim == 2 else value.transpose(2, 3, 1, 0)
    params.setdefault(name, {})['kernel' if kind == 'weight' else 'bias'] = value
  try:
    generators.make(ours, params)
  except UserInputError as e:
    raise UserInputError(f'{source}: {e}') from None
  return ours, params


def import_pth(path: str | os.PathLike, *, which: str = 'avgG') -> generators.Generator:
  """Reads a pytorch_GAN_zoo `.pth` into a `Generator` (the EMA `avgG` by default)."""
  path = os.fspath(path)
  obj = read_pth(path)
  if not isinstance(obj, Mapping):
    raise UserInputError(f'{path}: expected a dict of tensors, found {type(obj).__name__}.')
  state, config = _generator_state(obj, which, path)
  ours, params = convert_state_dict(state, config if isinstance(config, Mapping) else None,
                                    source=path)
  return generators.make(ours, params)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m gan_jax.pgan_import', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('pth', type=path_arg, help='pytorch_GAN_zoo checkpoint (.pth)')
  parser.add_argument('output', type=path_arg, help='our generator checkpoint to write (.npz)')
  parser.add_argument('--which', default='avgG', choices=('avgG', 'netG'),
                      help='the EMA generator (avgG, advised) or the raw one')
  parser.add_argument('--force', action='store_true', help='overwrite OUTPUT')
  args = parser.parse_args(argv)
  with cli_errors('gan_jax.pgan_import'):
    from vision_core.io import check_can_write  # pylint: disable=g-import-not-at-top
    check_can_write(args.output, overwrite=args.force)
    generator = import_pth(args.pth, which=args.which)
    generators.save(args.output, generator, overwrite=args.force)
    print(f'{args.output}: PGAN {generator.image_size}px, latent {generator.latent_dim}, '
          f'identity {generator.identity[:16]}')


if __name__ == '__main__':
  main(sys.argv[1:])
