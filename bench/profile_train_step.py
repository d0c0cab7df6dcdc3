"""Where the ViT train step spends its time: a jax.profiler trace aggregated per HLO op.

  python bench/profile_train_step.py [--steps 2] [--top 25]

Same model and recipe as bench/train_throughput.py. Prints per-step milliseconds (on CPU
summed over XLA:CPU's worker threads; on GPU summed over the device's streams) for each op
kind (`ynn_fusion` = matmuls and `copy_*` = layout copies on CPU; on GPU the kernel classes
gemm, attention, elementwise/reduction fusions, copies), then the most expensive single ops
with their HLO op_name (which layer). `bench/gpu_suite.py --sections vit_profile` runs the same
analysis on ViT-B/16.
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# GPU kernel name -> class, first match wins (cuBLAS/CUTLASS gemms, cuDNN attention, ...).
# cuDNN's attention helpers (dO.O, the dq conversion) are attention; its convolution kernels
# (the patch embedding: `sm80_xmma_fprop_implicit_gemm_..._cudnn`, a wgrad, a padding
# kernel) also carry 'cudnn' in their names, so they are matched first and kept apart.
_GPU_KERNEL_CLASSES = (
    ('convolution', r'fprop_implicit|s16816fprop|dgrad|wgrad|nhwcAddPadding'),
    ('attention', r'fmha|flash|sdpa|dot_do_o|convert_dq'),
    ('layer norm (ours)', r'layer_norm_'),  # vision_core.fused_norm's kernels
    ('gemm', r'gemm|xmma|cutlass|nvjet|sm\d+_'),
    ('triton', r'triton'),
    ('copy/transpose', r'copy|transpose'),
    ('reduction fusion', r'input_|reduce|reduction'),
    ('elementwise fusion', r'loop_|fusion|convert|broadcast|add|multiply'),
)


def kernel_class(name: str) -> str:
  for label, pattern in _GPU_KERNEL_CLASSES:
    if re.search(pattern, name, re.IGNORECASE):
      return label
  return 'other'


def trace_op_times(run, steps: int, kernels: collections.Counter | None = None):
  """Profiles `steps` calls of `run()` (each blocked on). Returns `(per_op, per_kind, device)`:
  milliseconds per step by HLO op name (`fusion.12`) and by kind, `device` 'cpu' or 'gpu'.
  On GPU each kernel is charged to its `hlo_op` stat, and kinds are kernel classes;
  `kernels`, when given, also gets milliseconds per step by GPU kernel name."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir)
    for _ in range(steps):
      jax.block_until_ready(run())
    jax.profiler.stop_trace()
    profile = ProfileData.from_file(glob.glob(f'{logdir}/**/*.xplane.pb', recursive=True)[0])
  per_op, per_kind = collections.Counter(), collections.Counter()
  gpu_planes = [p for p in profile.planes if p.name.startswith('/device:GPU')]
  if gpu_planes:
    for plane in gpu_planes:
      for line in plane.lines:
        if not line.name.startswith('Stream'):
          continue  # derived lines (XLA Ops/Modules) would count kernels twice
        for event in line.events:
          stats = dict(event.stats)
          ms = event.duration_ns / 1e6 / steps
          per_op[str(stats.get('hlo_op', event.name))] += ms
          per_kind[kernel_class(event.name)] += ms
          if kernels is not None:
            kernels[event.name] += ms
    return per_op, per_kind, 'gpu'
  for plane in profile.planes:
    for line in plane.lines:
      if 'Eigen' not in line.name:
        continue
      for event in line.events:
        if not event.name.startswith(('ThunkExecutor', 'SlinkyThreadPool', 'end:')):
          per_op[event.name] += event.duration_ns / 1e6 / steps
  for name, ms in per_op.items():
    per_kind[re.sub(r'\.\d+$', '', name)] += ms
  return per_op, per_kind, 'cpu'


def report(per_op, per_kind, hlo: str, top: int) -> list[str]:
  """Lines of text: time per kind, then the `top` ops with their HLO opcode and op_name."""
  total = sum(per_kind.values())
  lines = [f'op time per step: {total:.1f} ms']
  lines += [f'  {ms:8.2f} ms {100 * ms / total:5.1f}%  {kind}'
            for kind, ms in per_kind.most_common(top)]
  lines.append('most expensive ops:')
  for name, ms in per_op.most_common(top):
    match = re.search(re.escape(name) + r' = (\S+ \S+?)\(.*?op_name="([^"]+)"', hlo)
    where = f'{match.group(1)[-40:]}  {match.group(2)[-90:]}' if match else ''
    lines.append(f'  {ms:8.2f} ms  {name[:40]:40s} {where}')
  return lines


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n', maxsplit=1)[0])
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--top', type=int, default=25)
  args = parser.parse_args()
  import train_throughput as tt  # pylint: disable=g-import-not-at-top
  step, _ = tt.compiled_train_step(tt.bench_model(), *tt.batch_arrays(128), tt.CLASSES)
  step().block_until_ready()
  per_op, per_kind, _ = trace_op_times(step, args.steps)
  print('\n'.join(report(per_op, per_kind, step.hlo_text(), args.top)))


if __name__ == '__main__':
  main()
