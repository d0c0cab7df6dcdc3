"""Test setup: 8 virtual CPU devices (for the sharding tests), a compilation cache shared by the
test processes of one run, and the shared data path."""

import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

# Compile-time settings of XLA:CPU for the tests. Most of this suite's time is compilation: of
# small jitted programs, and of each op of the eager tests (every new shape is a program, ~50 ms
# each on a 2-core machine). LLVM at -O1 (XLA's default is -O2) with XLA's older elemental
# emitters instead of its MLIR fusion emitters compiles in about half the time; neither alone
# does much. Five test files, `-n 2`: 461 s with XLA's defaults, 390 s at -O0, 479 s with the
# old emitters only, 234 s with both at -O0 and 313 s (one more test included) with both at
# -O1. Not -O0: it stops vectorising reductions, and float32 sums come out in another order
# (an MSE 4e-6 off scikit-image's, Image GPT's CIFAR-10 test just over its bound). -O1 keeps
# them: the whole suite passes with these and with XLA's defaults. Run with the defaults by
# setting XLA_FLAGS yourself, e.g. `XLA_FLAGS=--xla_force_host_platform_device_count=8`.
FAST_COMPILE_FLAGS = '--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false'


def _jax_takes(flags: str) -> bool:
  """Whether this jaxlib starts with `flags`: an XLA flag it does not know aborts the process
  (the flags are internal and may be renamed), so they are tried in a child process first."""
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS='cpu')
  probe = 'import jax.numpy as jnp; jnp.sin(jnp.ones(3)).block_until_ready()'
  try:
    return subprocess.run([sys.executable, '-c', probe], env=env, capture_output=True,
                          timeout=300, check=False).returncode == 0
  except subprocess.TimeoutExpired:
    return False


# Must be set before jax is imported anywhere: gives 8 CPU devices for mesh tests. Set once,
# by the process that starts the run; xdist's workers and the processes tests launch inherit it.
if 'XLA_FLAGS' not in os.environ:
  _FLAGS = '--xla_force_host_platform_device_count=8'
  if _jax_takes(f'{_FLAGS} {FAST_COMPILE_FLAGS}'):
    _FLAGS = f'{_FLAGS} {FAST_COMPILE_FLAGS}'
  os.environ['XLA_FLAGS'] = _FLAGS
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


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
  """With `-n` and no `--dist` of the user's: `--dist loadscope`, each test file in one xdist
  worker, so that its tests share the jit and op caches of that process and its module
  fixtures are built once (compilation is most of this suite's time). On 2 workers of a 2-core
  machine the suite took 1,020 s instead of 1,171 s. Set here rather than in pyproject's
  addopts, where `--dist` would be an unknown option to a pytest without xdist."""
  if getattr(config.option, 'numprocesses', None) and config.option.dist == 'no':
    config.option.dist = 'loadscope'
    config.option.loadscopereorder = False  # the order of pytest_collection_modifyitems


# The longest test files (from the per-test times of a whole run, longest first). They are
# started first, so that the two workers end together instead of one running a long file
# while the other waits (xdist's own order, most tests first, started the multi-process and
# notebook tests last). A stale entry changes the order only.
LONG_FILES = ('test_multiprocess.py', 'test_vit_train.py', 'test_vit_model.py',
              'test_gan_compress.py', 'test_study.py', 'test_flash_attention.py',
              'test_fused_mlp.py', 'test_igpt_workdir.py', 'test_igpt_train.py',
              'test_notebook.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONG_FILES)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order kept


def pytest_sessionfinish(session):  # pylint: disable=unused-argument
  if _CACHE_MADE_HERE:
    shutil.rmtree(_CACHE_MADE_HERE, ignore_errors=True)


@pytest.fixture
def shared_data():
  """`../shared/data` beside the project root; skips the test where it is absent."""
  if not SHARED_DATA.is_dir():
    pytest.skip(f'{SHARED_DATA} is absent (the shared data folder beside the project root).')
  return SHARED_DATA
