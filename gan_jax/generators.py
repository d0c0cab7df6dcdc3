"""Generator checkpoints: one `.npz` (flat params + JSON config), and the generator identity.

Why `.npz` and not orbax: a generator that users ship and compressed files refer to
must be one self-describing file that any numpy can read without pickle, hash byte for
byte, and copy around; it is the same flat `'/'`-keyed layout as the official ViT
checkpoints (`vision_core.npz`). Orbax directories are for resumable training state.

The config is stored under the key `__config__` as a 0-d unicode array (plain numpy, no
pickle). `identity` = SHA-256 over the canonical config JSON and every array (name,
dtype, shape, bytes) in sorted key order; compressed files carry it so that a file is
never decoded by a different generator.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gan_jax.models_dcgan import DCGANGenerator
from gan_jax.models_pgan import PGANGenerator
from vision_core import npz
from vision_core.errors import UserInputError

CONFIG_KEY = '__config__'
FAMILIES = {'dcgan': DCGANGenerator, 'pgan': PGANGenerator}


def build(config: Mapping[str, Any]):
  """The flax module for `{'family': 'dcgan'|'pgan', **module_attributes}`."""
  if not hasattr(config, 'items'):  # a dict or a ConfigDict
    raise UserInputError(f'generator config: {config!r} is not a JSON object of fields.')
  config = dict(config)
  family = config.pop('family', None)
  if family not in FAMILIES:
    raise UserInputError(f'generator config: family={family!r}, expected one of '
                         f'{sorted(FAMILIES)}.')
  fields = {f.name for f in dataclasses.fields(FAMILIES[family])} - {'parent', 'name'}
  unknown = sorted(set(config) - fields)
  if unknown:
    raise UserInputError(f'generator config: unknown fields {unknown} for family '
                         f'{family!r}; known: {sorted(fields)}.')
  _check_sizes(config)
  if 'depth_other_scales' in config:
    config['depth_other_scales'] = tuple(config['depth_other_scales'])
  return FAMILIES[family](**config)


# Fields that count something (pixels, channels, features): positive integers.
_SIZE_FIELDS = ('latent_dim', 'image_size', 'channels', 'width', 'dim_latent', 'depth_scale0',
                'dim_output')


def _check_sizes(config: Mapping[str, Any]) -> None:
  """Raises `UserInputError` unless every size field is a positive int (a list of them for
  `depth_other_scales`): a bad one would fail inside flax's init instead."""
  def positive_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value > 0
  for key in _SIZE_FIELDS:
    if key in config and not positive_int(config[key]):
      raise UserInputError(f'generator config: {key}={config[key]!r}, expected a positive '
                           'integer.')
  depths = config.get('depth_other_scales', ())
  if not isinstance(depths, (list, tuple)) or not all(positive_int(d) for d in depths):
    raise UserInputError(f'generator config: depth_other_scales={depths!r}, expected a list '
                         'of positive integers.')


def latent_dim(config: Mapping[str, Any]) -> int:
  return int(config.get('dim_latent', config.get('latent_dim', 0)))


def identity(config: Mapping[str, Any], params: Mapping[str, Any]) -> str:
  """SHA-256 hex digest of the canonical config and all parameter arrays."""
  h = hashlib.sha256()
  h.update(json.dumps(dict(config), sort_keys=True).encode())
  for key, value in sorted(npz.flatten(params).items()):
    value = np.ascontiguousarray(np.asarray(value))
    h.update(f'{key}|{value.dtype.str}|{value.shape}'.encode())
    h.update(value.tobytes())
  return h.hexdigest()


@dataclasses.dataclass(frozen=True)
class Generator:
  """A loaded generator: module, params, config and identity.

  `generate(z)` maps `[B, latent_dim]` -> `[B, S, S, C]` in the generator's own value
  range (about [-1, 1]).
  """
  module: Any
  params: Any
  config: dict
  identity: str

  @property
  def latent_dim(self) -> int:
    return latent_dim(self.config)

  @property
  def image_size(self) -> int:
    return self.module.output_size

  @property
  def channels(self) -> int:
    return int(self.config.get('dim_output', self.config.get('channels', 3)))

  def apply(self, params, z):
    return self.module.apply({'params': params}, z)

  def generate(self, z):
    return _generate(self.module, self.params, jnp.asarray(z, jnp.float32))




_generate = jax.jit(lambda module, params, z: module.apply({'params': params}, z),
                    static_argnums=0)


def init_params(config: Mapping[str, Any], seed: int = 0):
  """Random parameters of the generator described by `config`."""
  return _jitted_init(json.dumps(dict(config), sort_keys=True))(jax.random.PRNGKey(seed))


@functools.lru_cache(maxsize=16)
def _jitted_init(config_json: str):
  """One compiled init per config (compiling is what costs; seeds reuse it)."""
  config = json.loads(config_json)
  module = build(config)
  # numpy, not jnp: the first call may happen inside `make`'s eval_shape trace, and a jnp
  # array created there would be a tracer captured by this cached function.
  z = np.zeros((1, latent_dim(config)), np.float32)
  return jax.jit(lambda key: module.init(key, z)['params'])


def make(config: Mapping[str, Any], params) -> Generator:
  module = build(config)
  expected = jax.eval_shape(lambda: init_params(config))
  npz.check_matches(params, expected, source=f'{config.get("family")} generator')
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
  return Generator(module, params, dict(config), identity(config, params))


def save(path: str | os.PathLike, generator_or_config, params=None, *,
         overwrite: bool = False) -> None:
  """Writes a generator checkpoint (`.npz`) atomically; refuses to overwrite by default."""
  if isinstance(generator_or_config, Generator):
    config, params = generator_or_config.config, generator_or_config.params
  else:
    config = dict(generator_or_config)
  flat = {k: np.asarray(v, np.float32) for k, v in npz.flatten(params).items()}
  flat[CONFIG_KEY] = np.array(json.dumps(config, sort_keys=True))
  npz.save_flat(path, flat, overwrite=overwrite)


def load(path: str | os.PathLike) -> Generator:
  """Reads a generator checkpoint written by `save` (or by the `.pth` importer)."""
  path = os.fspath(path)
  flat = npz.load_flat(path)
  if CONFIG_KEY not in flat:
    raise UserInputError(
        f'{path}: no {CONFIG_KEY!r} entry; not a gan_jax generator checkpoint (convert '
        'pytorch_GAN_zoo .pth files with `python -m gan_jax.pgan_import`).')
  try:
    config = json.loads(str(flat.pop(CONFIG_KEY)))
  except json.JSONDecodeError as e:
    raise UserInputError(f'{path}: entry {CONFIG_KEY!r} is not valid JSON ({e}).') from None
  try:
    return make(config, npz.unflatten(flat))
  except UserInputError as e:
    raise UserInputError(f'{path}: {e}') from None
