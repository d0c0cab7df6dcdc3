"""Compile for an NVIDIA H100 or H200 on a machine that has none.

With jax's CUDA plugin installed (`pip install 'jax-cuda12-plugin[with-cuda]'` at this jax's
version, ~5 GB; it needs no GPU and no driver to compile), XLA runs its whole GPU pipeline
on a CPU host: fusion, Triton and LLVM code generation, ptxas. So a kernel that would fail
to compile, spill registers or overflow shared memory on the GPU shows here, before any GPU
time is spent (bench/gpu_aot_check.py).

  devices = gpu_target.compile_only_devices('h100')
  with gpu_target.building_for('h100'):   # model code may pick its GPU-only kernels
    compiled = jax.jit(f, ...).lower(...).compile()

What it does not give: timings, and XLA's autotuning (which needs the device), so GEMMs get
default tilings. Mosaic GPU kernels are only lowered here: their own compile runs when the
program is loaded on a device.
"""

from __future__ import annotations

import contextlib
import importlib.metadata

import jax

from vision_core.errors import UserInputError

# Datasheet figures of the SXM parts (both Hopper, sm_90: 132 SMs, 228 KiB of shared
# memory per SM of which 227 KiB for one block, 50 MiB of L2). XLA uses them for its
# fusion and launch decisions, as it would use the properties a real device reports.
_HOPPER = dict(core_count=132, fpus_per_core=128, shared_memory_per_core=233472,
               shared_memory_per_block_optin=232448, l2_cache_size=52428800,
               clock_rate_ghz=1.98)
TARGETS = {
    'h100': dict(_HOPPER, name='NVIDIA H100 80GB HBM3', device_memory_size=85520809984,
                 memory_bandwidth=3352000000000),
    'h200': dict(_HOPPER, name='NVIDIA H200', device_memory_size=150754820096,
                 memory_bandwidth=4800000000000),
}
# XLA compiles without a device only for cuDNN >= 9.8 (it then assumes that version).
_MIN_CUDNN = (9, 8)

_building_for: list[str] = []


def _target(name: str) -> dict:
  if name not in TARGETS:
    raise UserInputError(f'GPU target {name!r}: expected one of {", ".join(TARGETS)}.')
  return TARGETS[name]


def backend() -> str:
  """The backend the program being built is for: 'gpu' inside `building_for`, else JAX's
  default."""
  return 'gpu' if _building_for else jax.default_backend()


def sm_count() -> int:
  """Streaming multiprocessors of the GPU being built for: `building_for`'s target, else
  the first device's."""
  if _building_for:
    return TARGETS[_building_for[-1]]['core_count']
  return jax.devices()[0].core_count


def require_gpu(setting: str, instead: str) -> None:
  """Refuses `setting` (e.g. "attention='pallas'", GPU-only kernels) unless the program is
  built for a GPU, naming it and `instead`, what runs on any backend."""
  if backend() != 'gpu':
    raise UserInputError(f"{setting} runs on NVIDIA GPUs only, and this run's backend is "
                         f'{backend()}; use {instead}.')


@contextlib.contextmanager
def building_for(name: str):
  """Model code traced inside builds for GPU target `name` (a key of `TARGETS`), although
  this process runs on another backend: to compile ahead of time for compile-only devices.
  (Without it, the GPU-only kernels refuse a CPU backend with a clear message.)"""
  _target(name)
  _building_for.append(name)
  try:
    yield
  finally:
    _building_for.pop()


def _cudnn_version() -> tuple[int, int]:
  try:
    major, minor = importlib.metadata.version('nvidia-cudnn-cu12').split('.')[:2]
    return max((int(major), int(minor)), _MIN_CUDNN)
  except (importlib.metadata.PackageNotFoundError, ValueError):
    return _MIN_CUDNN


def target_config(name: str) -> str:
  """XLA's `GpuTargetConfigProto`, as text, for target `name` (a key of `TARGETS`)."""
  t = _target(name)
  major, minor = _cudnn_version()
  info = '\n'.join(f'  {key}: {t[key]}' for key in (
      'core_count', 'fpus_per_core', 'shared_memory_per_core', 'shared_memory_per_block_optin',
      'l2_cache_size', 'clock_rate_ghz', 'device_memory_size', 'memory_bandwidth'))
  return f'''gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  threads_per_core_limit: 2048
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
{info}
  cuda_compute_capability {{ major: 9 minor: 0 }}
}}
platform_name: "CUDA"
dnn_version_info {{ major: {major} minor: {minor} }}
device_description_str: "{t['name']}"
'''


def compile_only_devices(name: str = 'h100', count: int = 1) -> list:
  """`count` compile-only devices of target `name`: shardings on them make `jit(...).lower(
  ...).compile()` build for that GPU; nothing can run on them."""
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  config = target_config(name)
  try:
    topology = topologies.get_topology_desc(name, platform='cuda', topology=f'1x1x{count}',
                                            target_config=config)
  except (RuntimeError, KeyError, NotImplementedError) as e:
    raise UserInputError(
        f"compiling for {name} needs jax's CUDA plugin (pip install "
        f"'jax-cuda12-plugin[with-cuda]=={jax.__version__}'; no GPU needed): {e}") from e
  return list(topology.devices)
