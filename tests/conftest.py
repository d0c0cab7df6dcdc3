"""Test setup: 8 virtual CPU devices (for the sharding tests) and the shared data path."""

import os
import pathlib

# Must be set before jax is imported anywhere: gives 8 CPU devices for mesh tests.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # pylint: disable=g-import-not-at-top

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


@pytest.fixture
def shared_data():
  """`../shared/data` beside the project root; skips the test where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} is absent (the shared data folder beside the project root).')
  return SHARED_DATA
