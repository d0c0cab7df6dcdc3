"""glibc's allocator told to keep freed memory, for training steps that run on the CPU.

XLA:CPU allocates a program's temporary buffers on every execution. glibc serves blocks that
large with `mmap` (or from per-thread heaps that it unmaps when they empty) and gives them
back to the kernel when they are freed, so every train step faults its whole working set in
again: a fifth of the CPU time of a small ViT step on a 2-core machine (docs/benchmarks.md).
Three `mallopt` settings keep that memory in the process instead:

- one arena (`M_ARENA_MAX=1`): XLA's worker threads would otherwise allocate from their own
  arenas, which `mmap` blocks above 64 MiB whatever the other settings say;
- no `mmap` for large blocks (`M_MMAP_MAX=0`);
- never trim the heap (`M_TRIM_THRESHOLD=SIZE_MAX`).

The cost: memory stays at its peak (a train step reaches it again every step anyway), and all
threads share one allocator lock. The trainers' CLIs call `keep_freed_memory` for CPU runs
only, before JAX starts its threads; the arena limit does not move threads that already have
an arena.
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import importlib.util
import os
import platform

# <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8

SETTING = 'glibc malloc: one arena, no mmap, no trim'


def accelerator_plugin_installed() -> bool:
  """Whether a JAX accelerator plugin (a `jax_plugins` entry point or package, libtpu) is
  installed, whether or not its device is present."""
  if importlib.metadata.entry_points(group='jax_plugins'):
    return True
  for name in ('jax_plugins', 'libtpu'):
    try:
      if importlib.util.find_spec(name) is not None:
        return True
    except (ImportError, ValueError):
      pass
  return False


def jax_runs_on_cpu() -> bool:
  """Whether JAX's default backend will be the CPU, decided without starting any backend.

  True when `JAX_PLATFORMS` (or `jax.config.jax_platforms`) puts 'cpu' first, or when it is
  unset and no accelerator plugin is installed. An installed plugin counts as an
  accelerator even on a machine without one: this errs towards leaving the allocator alone.
  """
  platforms = os.environ.get('JAX_PLATFORMS', '')
  try:
    import jax  # pylint: disable=g-import-not-at-top
    platforms = jax.config.jax_platforms or platforms
  except ImportError:
    pass
  if platforms:
    return platforms.split(',')[0].strip().lower() == 'cpu'
  return not accelerator_plugin_installed()


def glibc_malloc_is_ours_to_set() -> bool:
  """glibc Linux, and no malloc settings of the user's (`glibc.malloc.*` in `GLIBC_TUNABLES`,
  or a `MALLOC_*` variable) in the environment."""
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return False
  return 'glibc.malloc.' not in os.environ.get('GLIBC_TUNABLES', '') and not any(
      key.startswith('MALLOC_') for key in os.environ)


def keep_freed_memory() -> str | None:
  """Sets the three `mallopt` options above; returns `SETTING`, or None where it does not.

  Does nothing unless `glibc_malloc_is_ours_to_set()`: the user's own settings win.
  """
  if not glibc_malloc_is_ours_to_set():
    return None
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):
    return None
  mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
  # -1 as the trim threshold is SIZE_MAX to glibc (its parameter is converted to size_t);
  # INT_MAX would still trim above 2 GiB.
  ok = (mallopt(_M_ARENA_MAX, 1) == 1 and mallopt(_M_MMAP_MAX, 0) == 1
        and mallopt(_M_TRIM_THRESHOLD, -1) == 1)
  return SETTING if ok else None


def keep_freed_memory_on_cpu(enabled: bool = True) -> str | None:
  """`keep_freed_memory()` when `enabled` and JAX will run on the CPU; else None."""
  if not enabled or not jax_runs_on_cpu():
    return None
  return keep_freed_memory()
