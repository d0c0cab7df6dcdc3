"""ViT fine-tuning / training: `configs/vit.py:MODEL,DATASET`.

  python -m vit_jax.main --config configs/vit.py:ViT-B_16,cifar10 --workdir runs/b16_c10 \
      --config.pretrained=imagenet21k_ViT-B_16.npz
  python -m vit_jax.main --config configs/vit.py:ViT-Ti_16,../shared/data/cifar10 \
      --workdir runs/ti --config.optimizer=adamw --config.base_lr=1e-3

MODEL is a zoo name (`vit_jax.configs.models`, e.g. ViT-B_16, R50+ViT-B_16, testing).
DATASET is a TFDS name (prepared in array_record format under `tfds_data_dir`), an image
folder `{DATASET}/{split}/{class}/*.jpg|png`, or an MNIST IDX folder.

Defaults are the official fine-tuning recipe (SGD momentum 0.9, lr 0.03, batch 512, cosine
decay, grad-norm clip 1, 384 px for CIFAR). Expected: the official README reports ViT-B_16
(ImageNet-21k) fine-tuned on CIFAR-10 at 98.59% with `--config.total_steps=500
--config.warmup_steps=50` and 98.86% with 1000 / 100 (on a TPU/GPU; here every one of the
10,000 test images is scored, the official code drops the last partial batch). Not run on this
project's CPU. Without `pretrained` the run starts from random weights; use AdamW for that (see
`configs/vit_cifar10_scratch.py`).

Every field can be overridden with `--config.FIELD=VALUE`; the config is locked, so a
misspelt field fails and lists the valid ones.
"""

import ml_collections

from vit_jax.configs import models

# Official fine-tuning step counts and resolutions per dataset (from vit_jax/configs/common.py
# of google-research/vision_transformer).
_DATASET_DEFAULTS = {
    'cifar10': dict(total_steps=10_000, crop=384, resize=384, train='train', test='test'),
    'cifar100': dict(total_steps=10_000, crop=384, resize=384, train='train', test='test'),
    'imagenet2012': dict(total_steps=20_000, crop=384, resize=448, train='train',
                         test='validation'),
    'oxford_iiit_pet': dict(total_steps=500, crop=384, resize=448, train='train',
                            test='test'),
    'oxford_flowers102': dict(total_steps=500, crop=384, resize=448, train='train',
                              test='test'),
}


def get_config(arg: str = 'ViT-B_16,cifar10') -> ml_collections.ConfigDict:
  """`arg` = 'MODEL,DATASET'."""
  if ',' not in arg:
    raise ValueError(f'configs/vit.py:{arg}: expected MODEL,DATASET, e.g. ViT-B_16,cifar10.')
  model_name, dataset = arg.split(',', 1)
  defaults = _DATASET_DEFAULTS.get(dataset, dict(total_steps=10_000, crop=224, resize=256,
                                                 train='train', test='test'))
  config = ml_collections.ConfigDict()
  config.mode = 'train'  # train | evaluate
  config.model_name = model_name
  config.model = models.get_model_config(model_name)
  config.dataset = dataset
  config.tfds_data_dir = ml_collections.config_dict.placeholder(str)
  config.skip_bad_images = False
  config.pp = ml_collections.ConfigDict(dict(
      train=defaults['train'], test=defaults['test'], crop=defaults['crop'],
      resize=defaults['resize'],
      # 'resize_crop' (official fine-tuning: resize, random crop, flip), 'inception'
      # (inception crop + flip), 'pad_crop' (CIFAR from scratch: 4 px reflect pad, crop,
      # flip), 'none'.
      augment='resize_crop',
      # RandAugment after the crop and flip: (num_ops, magnitude out of 10), e.g. (2, 9);
      # num_ops 0 is off (vision_core.data.randaugment).
      randaugment=(0, 9),
      # Explicit op specs override the above (see vision_core.data.preprocess).
      train_ops='', test_ops=''))
  config.batch = 512
  config.batch_eval = 512
  config.accum_steps = 1
  config.total_steps = defaults['total_steps']
  config.base_lr = 0.03
  config.end_lr = 0.0
  config.warmup_steps = 500
  config.decay_type = 'cosine'  # cosine | linear | constant
  config.grad_norm_clip = 1.0
  config.optimizer = 'sgd'  # sgd (momentum) | adamw | adam
  config.momentum = 0.9
  config.b2 = 0.999
  config.weight_decay = 0.0
  config.label_smoothing = 0.0
  config.mixup_alpha = 0.0  # > 0: mixup with Beta(alpha, alpha) ratios, e.g. 0.2 (0: off)
  config.pretrained = ml_collections.config_dict.placeholder(str)  # official/our .npz
  config.mesh = (-1, 1)  # (data, model); -1 takes the remaining devices
  config.sharding = 'replicated'  # replicated | fsdp | tp | fsdp_tp
  config.dtype = 'float32'  # compute dtype: float32 | bfloat16 (params stay float32)
  # einsum (any backend) | cudnn (NVIDIA GPU flash attention, bf16; 1.18x faster training
  # for B/16 on an H200) | xla | pallas (our Triton flash attention, NVIDIA GPUs: faster
  # than cudnn, B/16 batch 512 bf16 training 122.7 ms/step against 128.2 on an H200;
  # docs/benchmarks.md, session 28). Attention dropout needs einsum.
  config.attention = 'einsum'
  # More GPU kernels (NVIDIA GPUs; the defaults run anywhere; the same parameters either
  # way): norm_impl 'pallas' does each residual add and the LayerNorm after it in one pass;
  # patch_embedding 'matmul' replaces the strided convolution (slow on GPUs) by one matmul;
  # mlp_impl 'pallas' puts the MLP's bias and GELU inside its matmuls. The fastest ViT-B/16
  # step measured (H200, batch 512, session 28: 114.2 ms, 47.7% MFU, timm's 179.5 ms):
  #   --config.dtype=bfloat16 --config.attention=pallas --config.patch_embedding=matmul
  #   --config.norm_impl=pallas    (adding mlp_impl=pallas: 115.1 ms, no gain)
  config.mlp_impl = 'xla'
  config.norm_impl = 'xla'
  config.patch_embedding = 'conv'
  config.seed = 0
  config.eval_every = 1000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 3
  config.progress_every = 10
  config.workers = 0  # grain worker processes (0: decode in threads of this process)
  config.cache_in_memory = False  # decode the whole split once into RAM (small datasets)
  # CPU runs: glibc keeps freed memory, so XLA's per-step buffers are not faulted in again
  # every step (8-15% faster steps; vision_core/host_memory.py).
  config.cpu_keep_freed_memory = True
  config.export_npz = True  # write {workdir}/model.npz in the official layout at the end
  return config.lock()
