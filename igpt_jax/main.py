r"""Train or fine-tune Image GPT: `python -m igpt_jax.main --config FILE:ARGS --workdir DIR`.

  python -m igpt_jax.main --config configs/igpt.py:tiny,cifar10 --workdir runs/igpt_tiny
  python -m igpt_jax.main --config configs/igpt.py:tiny,cifar10,finetune \
      --workdir runs/igpt_ft --config.init_from=runs/igpt_tiny/params.npz

A workdir that already holds checkpoints is resumed from the latest one; a finished run (its
final.json written for that step) is left as it is and its result printed. See configs/igpt.py.
"""

from __future__ import annotations

from vision_core import config_cli, host_memory

_CONFIG, _WORKDIR = config_cli.define_run_flags(
    config_help='Config file (configs/igpt.py:SIZE,DATASET[,OBJECTIVE]).',
    workdir_help='Directory for checkpoints, metrics, params.')


def main(argv):
  del argv
  config = _CONFIG.value
  # Before JAX starts the threads whose allocator arenas it decides.
  if host_memory.keep_freed_memory_on_cpu(config.get('cpu_keep_freed_memory', True)):
    print(f'CPU run: {host_memory.SETTING} (--config.cpu_keep_freed_memory=False: off)')
  from igpt_jax import train  # pylint: disable=g-import-not-at-top
  train.train_and_evaluate(config, _WORKDIR.value)


if __name__ == '__main__':
  config_cli.run(main, prog='igpt_jax.main', example='configs/igpt.py:tiny,cifar10')
