"""DCGAN training configs.

    python -m gan_jax.main --config configs/gan.py:dcgan,mnist --workdir /tmp/dcgan_mnist
    python -m gan_jax.main --config configs/gan.py:dcgan,cifar10 --workdir /tmp/dcgan_cifar
    python -m gan_jax.main --config configs/gan.py:dcgan,path/to/folder,64 --workdir ...

Override any field: `--config.total_steps=500`. Expected result (docs/results.md, 2-core
CPU): dcgan,mnist (the 10k t10k images, the only MNIST split in ../shared/data) gives
recognisable digits after 5000 steps (~3.5 min on a quiet CPU) and falling `fid_vit`
(5.04 -> 1.40) and `pixel_fd` curves in WORKDIR/metrics.jsonl; the EMA generator is exported to WORKDIR/generator.npz for
`gan_jax.compress`.

FID during training (`fid_every`, `fid_samples`): `fid_vit` is the FID on the pre-logits of
the ViT classifier `fid_vit_checkpoint` (default: the shipped CIFAR-10 ViT
vit_jax/weights/vit_cifar10/model.npz, 32x32 RGB input, 128-d features; '' turns it off).
Real and generated images are treated alike: uint8, grey (MNIST) repeated to 3 channels,
then bilinearly resized to the ViT's input (MNIST 28x28 -> 32x32). Its values depend on that
checkpoint (and for MNIST on a CIFAR-10 ViT seeing digits): compare them only between runs,
never with published Inception FIDs. Real statistics are cached in WORKDIR/fid_stats/ (keyed
by dataset and checkpoint SHA-256), so a resumed run reuses them. `pixel_fd` is the Frechet
distance of Gaussians fitted to raw pixels.
"""

import ml_collections

import vit_jax

# The shipped ViT classifier (trained on CIFAR-10; docs/results.md).
DEFAULT_FID_VIT = vit_jax.SHIPPED_CIFAR10_VIT

DATASETS = {
    # name: (path from the project root, split, image size, channels, preprocessing)
    'mnist': ('../shared/data/mnist', 'test', 28, 1, 'value_range(-1,1)'),
    'cifar10': ('../shared/data/cifar10', 'train', 32, 3, 'flip_lr|value_range(-1,1)'),
}


def get_config(arg: str = 'dcgan,mnist') -> ml_collections.ConfigDict:
  """`arg` = 'dcgan,mnist' | 'dcgan,cifar10' | 'dcgan,FOLDER[,SIZE]' (FOLDER/train/<class>/)."""
  parts = arg.split(',')
  model, dataset = parts[0], parts[1] if len(parts) > 1 else 'mnist'
  if model != 'dcgan':
    raise ValueError(f'configs/gan.py:{arg}: only the dcgan family trains here.')
  c = ml_collections.ConfigDict()
  if dataset in DATASETS:
    c.dataset, c.split, size, channels, c.preprocess = DATASETS[dataset]
  else:
    if len(parts) > 2 and not parts[2].isdigit():
      raise ValueError(f'configs/gan.py:{arg}: SIZE {parts[2]!r} is not a number of pixels '
                       '(28, 32 or 64).')
    size = int(parts[2]) if len(parts) > 2 else 64
    c.dataset, c.split, channels = dataset, 'train', 3
    c.preprocess = f'resize_small({size})|central_crop({size})|flip_lr|value_range(-1,1)'
  c.tfds_data_dir = ml_collections.config_dict.placeholder(str)
  c.skip_bad_images = False  # image folders: skip (and count) unreadable files
  c.generator = ml_collections.ConfigDict(dict(
      family='dcgan', latent_dim=64 if size <= 32 else 128, image_size=size,
      channels=channels, width=16 if size <= 32 else 32, normalization='pixel'))
  # Widths sized for a 2-core CPU: ~0.15 s/step at 28 px, batch 32 (docs/results.md); at
  # 32 px about twice that. The 32 px generator is ~0.23 M parameters (~0.9 MB).
  c.discriminator = ml_collections.ConfigDict(dict(image_size=size, width=16 if size <= 32
                                                   else 32))
  c.loss = 'ns_r1'  # or 'wgan_gp'
  c.r1_gamma = 1.0
  c.gp_lambda = 10.0
  c.lr_g = 2e-4
  c.lr_d = 2e-4
  c.adam_b1 = 0.5
  c.adam_b2 = 0.99
  c.ema_decay = 0.995
  c.batch_size = 32
  c.total_steps = 5000
  c.seed = 0
  c.num_devices = 0  # 0 = every device; the batch is sharded over them ('data').
  c.log_every = 50
  c.sample_every = 1000
  c.fid_every = 500  # and after the last step; 0 = no FID (no real statistics either)
  c.fid_samples = 2000  # EMA samples (and training images) per FID evaluation
  c.fid_vit_checkpoint = DEFAULT_FID_VIT  # ViT .npz (+ model.json) or HF ViT folder; '' = off
  c.fid_vit_model = ''  # zoo name (e.g. 'ViT-B_16') for a checkpoint without model.json
  c.fid_batch_size = 500  # images per compiled ViT call (sharded over 'data')
  c.checkpoint_every = 500
  return c
