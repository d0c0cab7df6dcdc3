"""The ViT's GELU and patch embedding, formulated for speed (vit_jax.layers and models_vit
use them; their matmul is vision_core.matmul, their LayerNorm vision_core.fused_norm).

Each computes what its plain formulation does (tests/test_vit_model_speedups.py checks that);
only the work XLA is given differs.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_core.layouts import row_major
from vision_core.matmul import matmul


def gelu(x, approximate: bool = True):
  """GELU. `approximate=True`: the tanh form, flax's `nn.gelu` default and so what the
  official ViT checkpoints were trained with. False: exact `x * Phi(x)` written with erf
  (XLA's f32 erf is one rational polynomial, cheaper than the exp-based erfc that
  `nn.gelu(approximate=False)` lowers to; PyTorch's and HF's default GELU)."""
  if approximate:
    return jax.nn.gelu(x, approximate=True)
  return 0.5 * x * (1.0 + jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


class PatchEmbedding(nn.Module):
  """The ViT's patch embedding, `nn.Conv(D, patch, strides=patch, padding='VALID')`, as one
  matmul: `[B, H, W, C]` -> `[B, H // ph, W // pw, D]`, same `kernel [ph, pw, C, D]` and
  `bias [D]` (and the same initialisation) as the convolution.

  Why: on an H100 the strided convolution over 3 input channels runs on an sm80
  implicit-GEMM kernel: 4.2 ms forward at ViT-B/16, batch 512, for 0.12 TFLOP (~28 TFLOP/s;
  docs/benchmarks.md, session 13). Here the image is cut into patches by a reshape and one
  transpose that keeps each patch row's `pw * C` values contiguous, and the product is a
  plain `[B * N, ph * pw * C] x [ph * pw * C, D]` matmul.

  The output's layout is pinned row-major (`[B, h, w, D]`, D minor), as the convolution's
  is. Unpinned, XLA's GPU layout assignment, free to choose, lays the whole residual stream
  out as `[N, D, B]` (batch minor) and every residual add of every block then transposes a
  matmul output: 13 ms slower per ViT-B/16 step on an H100 (docs/benchmarks.md, session 18;
  tests/test_gpu_target.py compiles for an H100 and checks the stream's layout;
  vision_core.layouts).
  """
  features: int
  patch: tuple[int, int]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    ph, pw = self.patch
    b, height, width, c = x.shape
    h, w = height // ph, width // pw  # 'VALID': a remainder of rows/columns is not covered
    kernel = self.param('kernel', nn.initializers.lecun_normal(),
                        (ph, pw, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    x = x[:, :h * ph, :w * pw].astype(self.dtype).reshape(b, h, ph, w, pw * c)
    patches = x.transpose(0, 1, 3, 2, 4).reshape(b, h, w, ph * pw * c)
    tokens = (matmul(patches, kernel.reshape(ph * pw * c, self.features).astype(self.dtype))
              + bias.astype(self.dtype))
    return row_major(tokens)
