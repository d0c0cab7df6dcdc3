"""The ViT-assisted compression study: `python -m gan_jax.study [--config configs/study.py:PRESET]`.

  python -m gan_jax.study                         # default preset, writes study_out/default
  python -m gan_jax.study --config configs/study.py:pgan_celebahq512 \
      --config.generator=pgan_celebahq512.npz --config.vit_checkpoint=ViT-B_16.npz \
      --config.images=faces/

Presets:
  default: four `skimage.data` images (a face: astronaut; an animal: chelsea; a logo-like
    graphic: logo, RGBA composited on white; an object: coffee), center-cropped and resized
    to the shipped CIFAR-10 DCGAN's 32x32, compressed to 8-bit latents, scored with the
    shipped CIFAR-10 ViT (ViT-Score top-3 of 10 classes). Needs nothing from the network or
    from ../shared (BRISQUE is added when ../shared/data/brisque/*.yml exists). Expected
    (docs/results.md, ## Study): GAN rows at 0.84 bits per pixel (108-byte files), mean
    ViT-Score 0.42, SSIM 0.27, PSNR 13.7 dB; JPEG rows at quality 1, 5.1 bpp (JPEG cannot
    get smaller at 32x32); about 33 s wall (43 s of CPU time) on a quiet 2-core CPU.
  pgan_celebahq512: the study's own setting: PGAN celebAHQ-512 (pytorch_GAN_zoo, converted with
    `python -m gan_jax.pgan_import`), the official ViT-B/16 ImageNet-2012 npz (ViT-Score top-100
    of 1000 classes at 384 px), images given by the user; see docs/study.md.

Every field can be overridden with `--config.FIELD=VALUE`.
"""

import glob
import os

import ml_collections

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SHARED_BRISQUE = os.path.join(_ROOT, '..', 'shared', 'data', 'brisque')


def _brisque_files():
  """OpenCV's LIVE BRISQUE model beside the project, if present (never required)."""
  model = os.path.join(_SHARED_BRISQUE, 'brisque_model_live.yml')
  range_file = os.path.join(_SHARED_BRISQUE, 'brisque_range_live.yml')
  if glob.glob(model) and glob.glob(range_file):
    return os.path.normpath(model), os.path.normpath(range_file)
  return '', ''


def get_config(arg: str = 'default') -> ml_collections.ConfigDict:
  """`arg` = 'default' | 'pgan_celebahq512'."""
  c = ml_collections.ConfigDict()
  c.preset = arg
  # Images: comma-separated `skimage:NAME` entries, image files, or folders of images.
  c.images = 'skimage:astronaut,skimage:chelsea,skimage:logo,skimage:coffee'
  c.alpha_background = 255  # RGBA images are composited on this grey level (255 = white).
  # Generator checkpoint (.npz, gan_jax.generators); '' = the shipped CIFAR-10 DCGAN.
  c.generator = ''
  # ViT classifier (.npz, official layout; or an HF ViT save_pretrained folder). '' = the
  # shipped CIFAR-10 ViT. Its model config comes from the model.json beside it (our trainer
  # writes it), HF's config.json, or `vit_model`.
  c.vit_checkpoint = ''
  c.vit_model = ''  # zoo name (e.g. ViT-B_16) when there is no model.json
  c.vit_resolution = 0  # 0 = model.json's resolution, else this (e.g. 384)
  c.vit_score_k = 3  # top-k overlap; chance level k / num_classes
  # Latent search (gan_jax.latent_search.SearchConfig).
  c.steps = 200
  c.restarts = 4
  c.optimizer = 'adam'
  c.learning_rate = 0.05
  c.stop_patience = 30
  c.seed = 0
  c.batch_size = 8  # images searched at once
  c.quantization = '8bit'
  # BRISQUE (OpenCV YAML files); '' = column says why it is absent.
  c.brisque_model, c.brisque_range = _brisque_files()
  c.figure_scale = 4  # pixel upscaling of small images in the figure
  c.out = os.path.join('study_out', arg)
  c.user_paths_required = False  # True: generator, vit_checkpoint and images must be given

  if arg == 'default':
    pass
  elif arg == 'pgan_celebahq512':
    c.images = ''  # the user's face images (files or folders), center-cropped to 512
    c.generator = ''
    c.vit_checkpoint = ''
    c.vit_model = 'ViT-B_16'
    c.vit_resolution = 384
    c.vit_score_k = 100
    c.steps = 1000
    c.restarts = 4
    c.batch_size = 4
    c.figure_scale = 1
    c.user_paths_required = True
  else:
    raise ValueError(f'configs/study.py:{arg}: unknown preset; expected default or '
                     'pgan_celebahq512.')
  return c
