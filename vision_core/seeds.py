"""Seeds given by users: integers in [0, 2**32), checked where they enter.

`jax.random.PRNGKey` (without 64-bit mode) and grain's shuffle take 32-bit seeds: a larger
or negative seed would be reduced mod 2**32 and silently equal another one (2**32 + 5 is 5),
so entry points reject it with a message naming the seed instead.
"""

from __future__ import annotations

import numpy as np

from vision_core.errors import UserInputError

MAX_SEED = 2**32 - 1


def check_seed(seed, *, field: str = 'seed', allow_none: bool = False) -> None:
  """Raises UserInputError naming `field` unless `seed` is an int in [0, MAX_SEED].

  Args:
    seed: the value given (a Python or NumPy integer; bools and floats are refused).
    field: how the user wrote it (`seed`, `--seed`, `--config.seed`), for the message.
    allow_none: also accept None (the data loader's "in order, no randomness").
  """
  if seed is None and allow_none:
    return
  expected = f'an integer in [0, {MAX_SEED}]' + (' or None' if allow_none else '')
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise UserInputError(f'{field}={seed!r}: expected {expected}.')
  if not 0 <= seed <= MAX_SEED:
    raise UserInputError(f'{field}={seed}: expected {expected} (random keys take 32-bit '
                         'seeds; a larger one would silently repeat a smaller one).')
