r"""Train, fine-tune or evaluate a ViT: `python -m vit_jax.main --config FILE:ARGS --workdir DIR`.

  python -m vit_jax.main --config configs/vit.py:ViT-B_16,cifar10 --workdir runs/b16 \
      --config.pretrained=ViT-B_16.npz [--config.FIELD=VALUE ...]
  python -m vit_jax.main --config configs/vit.py:ViT-B_16,cifar10 --workdir runs/b16 \
      --config.mode=evaluate

A workdir that already holds checkpoints is resumed from the latest one. See configs/vit.py.
"""

from __future__ import annotations

from absl import logging

from vision_core import config_cli, host_memory
from vision_core.errors import UserInputError

_CONFIG, _WORKDIR = config_cli.define_run_flags(
    config_help='Config file (configs/vit.py:MODEL,DATASET).',
    workdir_help='Directory for checkpoints, metrics, model.')


def main(argv):
  del argv
  config = _CONFIG.value
  # Before JAX starts the threads whose allocator arenas it decides.
  if host_memory.keep_freed_memory_on_cpu(config.get('cpu_keep_freed_memory', True)):
    print(f'CPU run: {host_memory.SETTING} (--config.cpu_keep_freed_memory=False: off)')
  from vit_jax import train_loop  # pylint: disable=g-import-not-at-top
  logging.info('Config:\n%s', config)
  if config.mode == 'train':
    train_loop.train_and_evaluate(config, _WORKDIR.value)
  elif config.mode == 'evaluate':
    train_loop.evaluate_only(config, _WORKDIR.value)
  else:
    raise UserInputError(f'mode={config.mode!r}: expected train or evaluate.')


def run():
  config_cli.run(main, prog='vit_jax.main', example='configs/vit.py:ViT-B_16,cifar10')


if __name__ == '__main__':
  run()
