"""Test setup: 8 virtual CPU devices (for the sharding tests), a compilation cache shared by the
test processes of one run, and the shared data path."""

import os
import pathlib
import shutil
import tempfile

# Must be set before jax is imported anywhere: gives 8 CPU devices for mesh tests.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')


# XLA compilation is most of this suite's time on a CPU, and many tests compile the same small
# models (each CLI test afresh, in a new process). So one pytest run shares a compilation cache:
# the process that starts the run makes an empty folder; its xdist workers and the processes
# the tests launch inherit it through the environment; the run removes it at its end, so no
# test depends on an earlier run.
_CACHE_MADE_HERE = None
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _CACHE_MADE_HERE = tempfile.mkdtemp(prefix='jax-vision-toolkit-tests-')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE_MADE_HERE
  # A size limit turns on the cache's file lock (filelock), so that no process reads an entry
  # while another is still writing it. The lock's price is a scan of the folder at each write,
  # so the many small compilations of eager ops (tens of ms each) stay out: with them (1,600
  # entries) three test files took 341 s, without them (77 entries) 225 s, without a cache
  # 364 s; with every compilation cached and no lock, 239 s.
  os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.3')
  os.environ.setdefault('JAX_COMPILATION_CACHE_MAX_SIZE', str(4 << 30))

import pytest  # pylint: disable=g-import-not-at-top

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


def pytest_sessionfinish(session):  # pylint: disable=unused-argument
  if _CACHE_MADE_HERE:
    shutil.rmtree(_CACHE_MADE_HERE, ignore_errors=True)


@pytest.fixture
def shared_data():
  """`../shared/data` beside the project root; skips the test where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} is absent (the shared data folder beside the project root).')
  return SHARED_DATA
