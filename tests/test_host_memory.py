"""vision_core.host_memory: glibc keeps freed memory, measured by page faults."""

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from vision_core import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A worker thread (as XLA's are) mallocs, writes and frees 96 MiB four times; the number of
# minor page faults of the last three rounds is printed. Freed memory that glibc unmaps must
# be faulted in again: 3 x 24,576 pages of 4 KiB.
_PROBE = textwrap.dedent('''
    import ctypes, resource, sys, threading
    from vision_core import host_memory
    setting = host_memory.keep_freed_memory() if sys.argv[1] == 'on' else None
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    faults = []
    def work(size=96 << 20):
      def once():
        block = libc.malloc(size)
        ctypes.memset(block, 1, size)
        libc.free(block)
      once()
      before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      for _ in range(3):
        once()
      faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    print(setting)
    print(faults[0])
''')

_GLIBC = platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


def _probe(mode: str, **env_extra) -> tuple[str, int]:
  env = {k: v for k, v in os.environ.items()
         if not k.startswith('MALLOC_') and k != 'GLIBC_TUNABLES'}
  env.update(PYTHONPATH=ROOT, **env_extra)
  out = subprocess.run([sys.executable, '-c', _PROBE, mode], env=env, check=True,
                       capture_output=True, text=True).stdout.splitlines()
  return out[0], int(out[1])


@pytest.mark.skipif(not _GLIBC, reason='glibc malloc only')
def test_keep_freed_memory_stops_refaulting_a_threads_freed_blocks():
  setting, faults_default = _probe('off')
  assert setting == 'None'
  assert faults_default > 3 * 24_576 // 2  # the probe sees the unmapping
  setting, faults_kept = _probe('on')
  assert setting == host_memory.SETTING
  assert faults_kept < 1_000


@pytest.mark.skipif(not _GLIBC, reason='glibc malloc only')
def test_user_malloc_settings_win():
  setting, faults = _probe('on', GLIBC_TUNABLES='glibc.malloc.arena_max=4')
  assert setting == 'None'
  assert faults > 3 * 24_576 // 2
  assert _probe('on', MALLOC_ARENA_MAX='4')[0] == 'None'


@pytest.fixture
def jax_platforms():
  """Sets `jax.config.jax_platforms` for one test (read by JAX only when a backend starts)."""
  import jax  # pylint: disable=g-import-not-at-top
  saved = jax.config.jax_platforms
  yield lambda value: jax.config.update('jax_platforms', value)
  jax.config.update('jax_platforms', saved)


@pytest.mark.parametrize('platforms, expected', [
    ('cpu', True), ('cpu,cuda', True), ('cuda', False), ('tpu,cpu', False), ('rocm', False)])
def test_jax_runs_on_cpu_follows_jax_platforms(jax_platforms, platforms, expected):
  jax_platforms(platforms)
  assert host_memory.jax_runs_on_cpu() is expected
  assert host_memory.keep_freed_memory_on_cpu(enabled=False) is None


def test_without_jax_platforms_an_installed_accelerator_plugin_means_not_cpu(
    jax_platforms, monkeypatch):
  jax_platforms(None)
  monkeypatch.delenv('JAX_PLATFORMS', raising=False)
  installed = set()
  monkeypatch.setattr(host_memory.importlib.util, 'find_spec',
                      lambda name: object() if name in installed else None)
  monkeypatch.setattr(host_memory.importlib.metadata, 'entry_points',
                      lambda group: ('plugin',) if 'entry point' in installed else ())
  assert host_memory.jax_runs_on_cpu() is True
  for plugin in ('libtpu', 'jax_plugins', 'entry point'):
    installed.add(plugin)
    assert host_memory.jax_runs_on_cpu() is False, plugin
    installed.clear()
