"""The model zoo: the official ViT and R+ViT configurations, by their official names.

`MODEL_CONFIGS[name]` is a locked ml-collections ConfigDict to pass as
`VisionTransformer(num_classes=N, **config)`. Names are the basenames of the checkpoints in
gs://vit_models (`ViT-B_16`, `R50+ViT-B_16`, ...); `AUGREG_CONFIGS` maps the AugReg file-name
prefixes (`B_16`, `R26_S_32`, ...) to the same configs.
"""

from __future__ import annotations

import ml_collections

from vision_core.errors import UserInputError

MODEL_CONFIGS: dict[str, ml_collections.ConfigDict] = {}
AUGREG_CONFIGS: dict[str, ml_collections.ConfigDict] = {}

# width, mlp_dim, heads, layers, dropout_rate, as in the paper's Table 1 (+ Ti and S from
# "How to train your ViT" / DeiT).
_SIZES = {
    'Ti': (192, 768, 3, 12, 0.0),
    'S': (384, 1536, 6, 12, 0.0),
    'B': (768, 3072, 12, 12, 0.0),
    'L': (1024, 4096, 16, 24, 0.1),
    'H': (1280, 5120, 16, 32, 0.1),
}


def vit_config(name: str, size: str, patch: int, *, classifier: str = 'token',
               representation_size: int | None = None, dropout_rate: float | None = None,
               resnet_layers: tuple[int, ...] | None = None) -> ml_collections.ConfigDict:
  """Builds a config: `size` in Ti/S/B/L/H, `patch` the (square) patch size in pixels."""
  width, mlp_dim, heads, layers, default_dropout = _SIZES[size]
  config = ml_collections.ConfigDict()
  config.model_name = name
  config.patches = ml_collections.ConfigDict({'size': (patch, patch)})
  config.hidden_size = width
  config.transformer = ml_collections.ConfigDict(dict(
      mlp_dim=mlp_dim, num_heads=heads, num_layers=layers, attention_dropout_rate=0.0,
      dropout_rate=default_dropout if dropout_rate is None else dropout_rate))
  config.classifier = classifier
  config.representation_size = representation_size
  if resnet_layers is not None:
    config.resnet = ml_collections.ConfigDict(
        {'num_layers': resnet_layers, 'width_factor': 1})
  return config


def _register(config: ml_collections.ConfigDict, augreg: bool = True) -> None:
  name = config.model_name
  MODEL_CONFIGS[name] = config.lock()
  if augreg:
    AUGREG_CONFIGS[name.replace('ViT-', '').replace('+', '_')] = MODEL_CONFIGS[name]


def _testing() -> ml_collections.ConfigDict:
  """A tiny model for tests: one block of width 10."""
  config = ml_collections.ConfigDict()
  config.model_name = 'testing'
  config.patches = ml_collections.ConfigDict({'size': (16, 16)})
  config.hidden_size = 10
  config.transformer = ml_collections.ConfigDict(dict(
      mlp_dim=10, num_heads=2, num_layers=1, attention_dropout_rate=0.0, dropout_rate=0.1))
  config.classifier = 'token'
  config.representation_size = None
  return config


_register(_testing(), augreg=False)
for _size, _patch in [('Ti', 16), ('S', 16), ('B', 16), ('L', 16), ('S', 32), ('B', 32),
                      ('B', 8)]:
  _register(vit_config(f'ViT-{_size}_{_patch}', _size, _patch))
_register(vit_config('ViT-L_32', 'L', 32, dropout_rate=0.0), augreg=False)
_register(vit_config('ViT-H_14', 'H', 14), augreg=False)
for _size, _patch in [('S', 16), ('B', 16), ('S', 32), ('B', 32)]:
  _register(vit_config(f'ViT-{_size}_{_patch}-gap-norep', _size, _patch, classifier='gap'))
# Hybrids: the ResNet stem downsamples 2^(2 + stages - 1); patches make up the rest.
_register(vit_config('R+ViT-Ti_16', 'Ti', 8, resnet_layers=()))
_register(vit_config('R50+ViT-B_16', 'B', 1, dropout_rate=0.1, resnet_layers=(3, 4, 9)),
          augreg=False)
_register(vit_config('R26+ViT-S_32', 'S', 1, resnet_layers=(2, 2, 2, 2)))
_register(vit_config('R26+ViT-B_32', 'B', 1, resnet_layers=(2, 2, 2, 2)))
_register(vit_config('R50+ViT-L_32', 'L', 1, resnet_layers=(3, 4, 6, 3)))


def get_model_config(name: str) -> ml_collections.ConfigDict:
  """The config registered under `name` (official or AugReg spelling), unlocked copy."""
  config = MODEL_CONFIGS.get(name) or AUGREG_CONFIGS.get(name)
  if config is None:
    raise UserInputError(
        f'unknown model name {name!r}; valid names: {", ".join(sorted(MODEL_CONFIGS))} '
        f'(or the AugReg spellings {", ".join(sorted(AUGREG_CONFIGS))}).')
  return ml_collections.ConfigDict(config.to_dict())
