"""XLA settings for the processes that tests launch."""

import os
import re


def xla_flags(devices: int) -> str:
  """This run's XLA_FLAGS (tests/conftest.py's compile settings) with `devices` CPU devices
  instead of the suite's 8: a command that is not about meshes runs as on a user's machine,
  with one device, and compiles and runs faster than partitioned 8 ways over 2 cores."""
  others = re.sub(r'--xla_force_host_platform_device_count=\S+', '',
                  os.environ.get('XLA_FLAGS', '')).split()
  return ' '.join([f'--xla_force_host_platform_device_count={devices}', *others])
