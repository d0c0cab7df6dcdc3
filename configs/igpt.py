"""Image GPT pretraining / fine-tuning: `configs/igpt.py:SIZE,DATASET[,OBJECTIVE]`.

  python -m igpt_jax.main --config configs/igpt.py:tiny,cifar10 --workdir runs/igpt_tiny
  python -m igpt_jax.main --config configs/igpt.py:S,cifar10 --workdir runs/igpt_s \
      --config.image_size=32 --config.batch_size=64
  python -m igpt_jax.main --config configs/igpt.py:tiny,cifar10,finetune \
      --workdir runs/igpt_tiny_ft --config.init_from=runs/igpt_tiny/params.npz

SIZE: S, M, L (the released widths/depths) or mini, tiny, testing (CPU-sized); see
`igpt_jax.model.SIZES`. DATASET: 'cifar10' reads `../shared/data/cifar10` (JPEG folders)
when that folder exists, else the prepared TFDS dataset; any image-folder path or TFDS name
works. OBJECTIVE: 'generative' (next token, default), 'bert' (15% masking, the release's
BERT variant), or 'finetune' (the `clf` head on the pooled `ln_f` output, jointly with the
generative loss weighted by `gen_loss_weight`; start from `init_from`).

Images are resized to `image_size` and mapped to palette tokens (`palette`: OpenAI's
kmeans_centers.npy or ours; empty = the one beside `init_from`, else fit 512 centres by
mini-batch k-means on training pixels); the palette used is saved as `palette.npy` in the
workdir. Measured (docs/results.md, with bench/igpt_probe.py): the tiny model on 16x16
CIFAR-10 (256 tokens) went from 3.0 bits/dim (uniform over 512 colours, the zero-initialised
`wtet`) to 1.18 bits/dim on 2,000 test images drawn at random from all classes (1.18 on
all 10,000) after 1,500 steps of batch 64 (40 minutes on a 2-core CPU; bits/dim = next-token bits / 3 RGB
dimensions, on the palette-quantised images).

Every field can be overridden with `--config.FIELD=VALUE`.
"""

import os

import ml_collections

_SHARED_CIFAR10 = os.path.join('..', 'shared', 'data', 'cifar10')


def get_config(arg: str = 'tiny,cifar10') -> ml_collections.ConfigDict:
  """`arg` = 'SIZE,DATASET[,OBJECTIVE]'."""
  parts = arg.split(',')
  if len(parts) not in (2, 3):
    raise ValueError(f'configs/igpt.py:{arg}: expected SIZE,DATASET[,OBJECTIVE], e.g. '
                     'tiny,cifar10.')
  size, dataset = parts[:2]
  objective = parts[2] if len(parts) == 3 else 'generative'
  if dataset == 'cifar10' and os.path.isdir(_SHARED_CIFAR10):
    dataset = _SHARED_CIFAR10
  small = size in ('tiny', 'testing', 'mini')
  config = ml_collections.ConfigDict()
  config.size = size
  config.objective = objective  # generative | bert | finetune
  config.dataset = dataset
  config.tfds_data_dir = ml_collections.config_dict.placeholder(str)
  config.skip_bad_images = False  # image folders: skip (and count) unreadable files
  config.cache_in_memory = False  # Decode every image once (small datasets like CIFAR).
  config.train_split = 'train'
  config.test_split = 'test'
  config.image_size = 16 if small else 32
  config.palette = ''  # [512, 3] .npy or HF preprocessor_config.json; '' fits one.
  config.palette_fit_images = 5000
  config.palette_fit_steps = 300  # Mini-batches of 8,192 pixels.
  config.vocab_size = 512
  config.dtype = 'float32'  # Compute dtype: float32 or bfloat16.
  # einsum (any backend) | pallas: flash attention, NVIDIA GPUs (no [B, H, T, T] weights).
  config.attention = 'einsum'

  config.batch_size = 64
  config.total_steps = 2000 if small else 100_000
  config.time_limit_minutes = 0.0  # > 0: stop (evaluate, checkpoint) once this is spent.
  config.lr = 3e-3 if small else 1e-3
  config.warmup_steps = 100 if small else 5000
  config.weight_decay = 0.0
  config.b2 = 0.95
  config.grad_clip = 1.0
  config.bert_mask_prob = 0.15
  config.gen_loss_weight = 0.5 if objective == 'finetune' else 1.0  # Finetune: joint.
  config.init_from = ''  # Params (.npz, TF checkpoint, HF safetensors) to start from.
  config.mesh = (-1, 1)  # (data, model) devices; -1 takes the remaining devices.
  config.sharding = 'replicated'  # replicated | fsdp | tp | fsdp_tp (see vision_core.sharding)

  config.seed = 0
  config.log_every = 50
  config.eval_every = 500
  config.eval_examples = 1000  # Test images per evaluation, a fixed random subset (0: all).
  config.checkpoint_every = 500
  config.keep_checkpoints = 2
  # CPU runs: glibc keeps freed memory, so XLA's per-step buffers are not faulted in again
  # every step (22% faster tiny-model steps; vision_core/host_memory.py).
  config.cpu_keep_freed_memory = True
  config.sample_grid = True  # At the end: completions of 4 test images, samples.png.
  return config
