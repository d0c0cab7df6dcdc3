"""A shorter compiled chunk of the GAN latent search, for the tests that run the search
through `gan_jax.compress.main` or `gan_jax.study.run`, which have no chunk setting."""

import functools

from gan_jax import latent_search

# On a CPU the search runs as compiled chunks of `chunk` unrolled steps (`loop='auto'`), and
# compiling the chunk is most of a short search's time: it grows with the steps it unrolls
# (a 2-step chunk compiled about 4x faster than the default 10 on a 2-core CPU). The steps
# run and their results do not depend on the chunk (test_gan_compress checks the chunked
# driver against the single while-loop program); the default chunk still runs in
# test_study's command-line tests, in processes of their own.
CHUNK = 2


def shorten_chunks(patch) -> None:
  """Makes `latent_search.SearchConfig()` default to `CHUNK`-step chunks while `patch` (a
  `pytest.MonkeyPatch`) holds; a chunk given explicitly is kept."""
  patch.setattr(latent_search, 'SearchConfig',
                functools.partial(latent_search.SearchConfig, chunk=CHUNK))
