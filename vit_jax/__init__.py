"""Vision Transformer (Dosovitskiy et al., 2020) in JAX/Flax, compatible with the official
google-research/vision_transformer checkpoints and configs."""

import os as _os

# The shipped CIFAR-10 ViT classifier (docs/results.md), the default feature extractor of the
# study and of the GAN trainer's fid_vit; found via the package, so from any directory.
SHIPPED_CIFAR10_VIT = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), 'weights',
                                    'vit_cifar10', 'model.npz')
