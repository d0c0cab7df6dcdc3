"""Per-program XLA compiler options: used where the compiler takes them, else XLA's defaults."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan_jax import generators, latent_search
from vision_core import xla_options


@pytest.mark.parametrize('options', [
    {'xla_no_such_option_anywhere': True},  # an option this jaxlib does not know
    {'xla_cpu_enable_fast_math': 'not-a-bool'},  # a known option, a value it refuses
    {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_NOT_A_KIND'},
])
def test_options_the_compiler_refuses_fall_back_to_defaults(options):
  assert xla_options.accepted(options) == {}


def test_options_the_compiler_takes_are_used(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  assert xla_options.accepted({'xla_cpu_enable_fast_math': False}) == {
      'xla_cpu_enable_fast_math': False}
  assert xla_options.accepted({}) == {}


def test_the_users_xla_flags_win(monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', '--xla_cpu_experimental_ynn_fusion_type=+eltwise')
  assert xla_options.accepted(xla_options.YNN_WITHOUT_REDUCE) == {}


def _ynn_fusions_with_a_reduce(options) -> tuple[int, int]:
  """(YNNPACK fusions holding a reduction, all YNNPACK fusions) in the optimised gradient
  of conv -> LeakyReLU -> PixelNorm -> conv, the pattern of the PGAN generator. (Small
  shapes skip YNNPACK altogether: [4, 16, 16, 32] is large enough.)"""
  def loss(x, w):
    conv = lambda v: jax.lax.conv_general_dilated(v, w, (1, 1), 'SAME',
                                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    y = jax.nn.leaky_relu(conv(x), 0.2)
    y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + 1e-8)
    return jnp.sum(jnp.square(conv(y)))
  args = jnp.ones((4, 16, 16, 32)), jnp.ones((3, 3, 32, 32))
  hlo = jax.jit(jax.grad(loss), compiler_options=options).lower(*args).compile().as_text()
  bodies = {m.group(1): block for block in hlo.split('\n\n')
            if (m := re.match(r'%(\S+) ', block.strip()))}
  called = [re.search(r'calls=%([\w.\-]+)', line).group(1)
            for line in hlo.splitlines() if '__ynn_fusion' in line]
  return sum(' reduce(' in bodies.get(c, '') for c in called), len(called)


def test_ynn_without_reduce_changes_the_cpu_program(monkeypatch):
  """Where this jaxlib takes the option, it must reach the compiler: convolutions still on
  YNNPACK, but no reduction inside their fusions (by default PixelNorm's sums are)."""
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  if jax.default_backend() != 'cpu':
    pytest.skip('an XLA:CPU option')
  options = xla_options.accepted(xla_options.YNN_WITHOUT_REDUCE)
  if not options:
    pytest.skip(f'jaxlib {jax.__version__} refuses {xla_options.YNN_WITHOUT_REDUCE}: '
                'the latent search runs with XLA defaults (re-measure docs/benchmarks.md)')
  with_reduce, fusions = _ynn_fusions_with_a_reduce({})
  assert with_reduce > 0 and fusions > 0
  with_reduce, fusions = _ynn_fusions_with_a_reduce(options)
  assert with_reduce == 0 and fusions > 0


def test_latent_search_same_result_with_and_without_the_option(monkeypatch):
  """The option changes which kernels run, not the search: a PGAN search (PixelNorm after
  every conv) with the options it picks and with XLA's defaults agrees up to rounding."""
  config = {'family': 'pgan', 'dim_latent': 16, 'depth_scale0': 16,
            'depth_other_scales': [16, 8]}
  gen = generators.make(config, generators.init_params(config, seed=0))
  targets = np.asarray(gen.generate(np.random.default_rng(1).standard_normal(
      (2, 16)).astype(np.float32)))
  ids = latent_search.image_ids(targets)
  # One step per compiled chunk: each search compiles its chunk, and a chunk of 5 unrolled
  # steps took 5x as long to compile (the same curves).
  cfg = latent_search.SearchConfig(steps=20, restarts=2, stop_patience=0, chunk=1)
  asked = []
  real_accepted = xla_options.accepted
  monkeypatch.setattr(xla_options, 'accepted', lambda o: asked.append(o) or real_accepted(o))

  def run(options):
    search = latent_search.make_latent_search(gen.apply, latent_dim=16, config=cfg,
                                              compiler_options=options)
    return search(gen.params, targets, ids)
  chosen, defaults = run(None), run({})
  assert asked == [xla_options.YNN_WITHOUT_REDUCE]  # on CPU it asks; given {} it does not
  np.testing.assert_allclose(chosen.curves, defaults.curves, rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(chosen.latents, defaults.latents, rtol=1e-3, atol=1e-4)


def test_perceptual_search_keeps_xla_defaults(monkeypatch):
  """The ViT's reductions gain from YNNPACK's fusion: a search with the feature term must
  not ask for the option."""
  config = {'family': 'pgan', 'dim_latent': 8, 'depth_scale0': 8, 'depth_other_scales': []}
  gen = generators.make(config, generators.init_params(config, seed=0))
  asked = []
  monkeypatch.setattr(xla_options, 'accepted', lambda o: asked.append(o) or {})
  cfg = latent_search.SearchConfig(steps=2, restarts=1, perceptual_weight=0.5)
  latent_search.make_latent_search(gen.apply, latent_dim=8, config=cfg,
                                   features_fn=lambda images: images.mean(axis=(1, 2)))
  assert asked == []
