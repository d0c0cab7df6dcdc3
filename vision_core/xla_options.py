"""Per-program XLA compiler options, used only where this jaxlib accepts them.

`jax.jit(..., compiler_options=...)` tunes one compiled program without touching the rest of
the process (XLA_FLAGS would). The options that pay off are experimental XLA:CPU settings,
whose names and values change between jaxlib releases, and an option the compiler does not
know fails the compile. So `accepted` checks them once per process on a one-op program, and
a program whose options are refused compiles with XLA's defaults: slower, never broken.
"""

from __future__ import annotations

import functools
import os

import jax
import numpy as np

# XLA:CPU's YNNPACK fusions without the REDUCE kind: convolutions and dots still go to
# YNNPACK, but reductions are left to XLA's own loop fusions instead of being fused into
# the neighbouring convolution. (The default of jaxlib 0.10 is INDIVIDUAL_DOT,
# INDIVIDUAL_CONVOLUTION and REDUCE; the list below is it without REDUCE, checked to give
# the same program as XLA_FLAGS' `--xla_cpu_experimental_ynn_fusion_type=-reduce`.)
# Which programs gain is measured, not general: see `gan_jax.latent_search`.
YNN_WITHOUT_REDUCE = {
    'xla_cpu_experimental_ynn_fusion_type':
        'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION',
}


def accepted(options: dict[str, object]) -> dict[str, object]:
  """`options` if the default backend compiles with them and the user's XLA_FLAGS set none
  of them (the user's choice wins), else `{}` (XLA's defaults)."""
  flags = os.environ.get('XLA_FLAGS', '')
  if not options or any(name in flags for name in options):
    return {}
  return dict(options) if _compiles_with(tuple(sorted(options.items()))) else {}


@functools.cache
def _compiles_with(items: tuple) -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(items)).lower(np.float32(0)).compile()
  except (jax.errors.JaxRuntimeError, ValueError, TypeError):
    return False
  return True
