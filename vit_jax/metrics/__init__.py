"""Image-quality metrics on `[B, H, W, C]` batches, jit-compiled, one value per image.

Conventions and the raw-pixel FID are documented in docs/metrics.md.
"""

from vit_jax.metrics.pixel import mse, psnr
from vit_jax.metrics.ssim import ms_ssim, ssim
from vit_jax.metrics.frechet import GaussianStats, fid, frechet_distance
from vit_jax.metrics.features import (feature_stats, fid_from_images, inception_extractor,
                                      pixel_extractor, pixel_row_fid, vit_extractor)
from vit_jax.metrics.brisque import brisque, brisque_features
from vit_jax.metrics.vit_score import vit_score, vit_scores

__all__ = [
    'mse', 'psnr', 'ms_ssim', 'ssim', 'GaussianStats', 'fid', 'frechet_distance', 'feature_stats',
    'fid_from_images', 'inception_extractor', 'pixel_extractor', 'pixel_row_fid', 'vit_extractor',
    'brisque', 'brisque_features', 'vit_score', 'vit_scores',
]
