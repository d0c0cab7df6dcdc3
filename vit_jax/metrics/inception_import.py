"""Reads pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` into `FIDInceptionV3` variables.

The .pth file is a plain PyTorch state dict; it is read with `torch.load(weights_only=True)`
(no pickled code runs). torch is needed only for that step (`pip install torch==2.13.0`, or
our `[torch]` extra); `python -m vit_jax.metrics.inception_import IN.pth OUT.npz` converts it
once to an .npz that loads without torch.

Key mapping (PyTorch -> Flax, NCHW -> NHWC):
  X.conv.weight [O, I, kh, kw]  -> params/X/conv/kernel [kh, kw, I, O]
  X.bn.weight / X.bn.bias       -> params/X/bn/scale / bias
  X.bn.running_mean / _var      -> batch_stats/X/bn/mean / var
  fc.*, *.num_batches_tracked   -> not used (pool3 features come before the classifier)
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vision_core import io, npz, torch_io
from vision_core.errors import UserInputError, cli_errors
from vit_jax.metrics import inception

_IGNORED_PREFIXES = ('fc.', 'AuxLogits.')


def expected_shapes() -> dict[str, Any]:
  """The `{'params': ..., 'batch_stats': ...}` tree of shapes of `FIDInceptionV3`."""
  model = inception.FIDInceptionV3(resize_input=False)
  shapes = jax.eval_shape(model.init, jax.random.key(0),
                          jnp.zeros((1, inception.MIN_SIZE, inception.MIN_SIZE, 3)))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


def convert_state_dict(state_dict: Mapping[str, Any], *, source: str = 'state dict'):
  """PyTorch-layout arrays (numpy or torch tensors) -> Flax variables, checked against the model.

  Raises:
    UserInputError: naming every missing, unexpected or wrongly shaped key.
  """
  flat = {}
  unknown = []
  for key, value in state_dict.items():
    if key.startswith(_IGNORED_PREFIXES) or key.endswith('num_batches_tracked'):
      continue
    array = np.asarray(value.detach().cpu().numpy() if hasattr(value, 'detach') else value,
                       dtype=np.float32)
    module, _, leaf = key.rpartition('.')
    path = module.replace('.', '/')
    if leaf == 'weight' and module.endswith('.conv'):
      if array.ndim != 4:
        raise UserInputError(f'{source}: {key} should be a 4-D conv weight, got {array.shape}.')
      flat[f'params/{path}/kernel'] = array.transpose(2, 3, 1, 0)
    elif module.endswith('.bn') and leaf in ('weight', 'bias', 'running_mean', 'running_var'):
      collection = 'params' if leaf in ('weight', 'bias') else 'batch_stats'
      name = {'weight': 'scale', 'bias': 'bias', 'running_mean': 'mean', 'running_var': 'var'}
      flat[f'{collection}/{path}/{name[leaf]}'] = array
    else:
      unknown.append(key)
  if unknown:
    raise UserInputError(
        f'{source}: keys that are not part of the FID Inception-v3: {sorted(unknown)[:10]}'
        f'{" ..." if len(unknown) > 10 else ""} ({len(unknown)} in all). Expected '
        "pytorch-fid's pt_inception-2015-12-05 state dict.")
  variables = npz.unflatten(flat)
  npz.check_matches(variables, expected_shapes(), source=source)
  return variables


def read_pth(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The state dict of a .pth file (`vision_core.torch_io`: weights only, torch optional)."""
  return torch_io.read_state_dict(path, hint=(
      ' Or convert it once elsewhere with python -m vit_jax.metrics.inception_import IN.pth '
      'OUT.npz and pass the .npz.'))


def load_inception(path: str | os.PathLike):
  """FID Inception variables from pytorch-fid's .pth or from our converted .npz."""
  path = os.fspath(path)
  if path.endswith('.npz'):
    variables = npz.unflatten(npz.load_flat(path))
    npz.check_matches(variables, expected_shapes(), source=path)
    return jax.tree.map(lambda a: np.asarray(a, np.float32), variables)
  return convert_state_dict(read_pth(path), source=path)


def main(argv: list[str]) -> None:
  """`python -m vit_jax.metrics.inception_import IN.pth OUT.npz [--force]`."""
  if {'-h', '--help'} & set(argv):  # every other CLI answers --help; this one did with an error
    print(__doc__.split('\n\n')[0] + '\n\nusage: python -m vit_jax.metrics.inception_import '
          'IN.pth OUT.npz [--force]')
    return
  args = [io.expand_user(a) for a in argv if a != '--force']  # quoted '~/x' too
  if len(args) != 2:
    raise UserInputError('usage: python -m vit_jax.metrics.inception_import IN.pth OUT.npz '
                         '[--force]')
  variables = load_inception(args[0])
  npz.save_flat(args[1], npz.flatten(variables), overwrite='--force' in argv)
  print(f'wrote {args[1]}')


if __name__ == '__main__':
  with cli_errors('inception_import'):
    main(sys.argv[1:])
