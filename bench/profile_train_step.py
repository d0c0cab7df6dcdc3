"""Where the ViT train step spends its time: a jax.profiler trace aggregated per HLO op kind.

  python bench/profile_train_step.py [--steps 2] [--top 25]

Same model and recipe as bench/train_throughput.py. Prints per-step milliseconds (summed over
XLA:CPU's worker threads) for each fusion kind (`ynn_fusion` = matmuls, `copy_*` = layout
copies, ...), then the most expensive single ops with their HLO op_name (which layer).
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


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=2)
  parser.add_argument('--top', type=int, default=25)
  args = parser.parse_args()
  import jax  # pylint: disable=g-import-not-at-top
  from jax.profiler import ProfileData  # pylint: disable=g-import-not-at-top
  import train_throughput as tt  # pylint: disable=g-import-not-at-top
  from vision_core import mesh as mesh_lib, optim  # pylint: disable=g-import-not-at-top
  from vit_jax import models_vit, train  # pylint: disable=g-import-not-at-top
  from vit_jax.configs import models  # pylint: disable=g-import-not-at-top

  config = models.vit_config('bench', 'Ti', tt.PATCH, dropout_rate=0.0)
  config.transformer.num_layers = tt.DEPTH
  model = models_vit.VisionTransformer(num_classes=tt.CLASSES, **config)
  mesh = mesh_lib.make_mesh((1, 1), jax.devices()[:1])
  schedule = optim.make_schedule(base_lr=1e-3, total_steps=10_000, decay_type='constant')
  tx = optim.make_optimizer(name='adamw', schedule=schedule, grad_norm_clip=1.0,
                            weight_decay=1e-4)
  state, shardings = train.create_train_state(model=model, tx=tx,
                                              image_shape=(tt.SIZE, tt.SIZE, 3), mesh=mesh)
  step = train.make_train_step(model=model, tx=tx, schedule=schedule, mesh=mesh,
                               state_shardings=shardings, num_classes=tt.CLASSES, donate=False)
  images, labels = tt.batch_arrays(128)
  data = mesh_lib.shard_batch({'image': images, 'label': labels}, mesh)
  compiled = step.lower(state, data).compile()
  hlo = compiled.as_text()
  jax.block_until_ready(compiled(state, data))
  with tempfile.TemporaryDirectory() as logdir:
    jax.profiler.start_trace(logdir)
    for _ in range(args.steps):
      jax.block_until_ready(compiled(state, data))
    jax.profiler.stop_trace()
    profile = ProfileData.from_file(glob.glob(f'{logdir}/**/*.xplane.pb', recursive=True)[0])
  per_op = collections.Counter()
  for plane in profile.planes:
    for line in plane.lines:
      if 'Eigen' not in line.name:
        continue
      for event in line.events:
        if not event.name.startswith(('ThunkExecutor', 'SlinkyThreadPool', 'end:')):
          per_op[event.name] += event.duration_ns / 1e6 / args.steps
  kinds = collections.Counter()
  for name, ms in per_op.items():
    kinds[re.sub(r'\.\d+$', '', name)] += ms
  total = sum(kinds.values())
  print(f'op time per step, all threads: {total:.0f} ms')
  for kind, ms in kinds.most_common(args.top):
    print(f'  {ms:8.1f} ms {100 * ms / total:5.1f}%  {kind}')
  print('most expensive ops:')
  for name, ms in per_op.most_common(args.top):
    match = re.search(re.escape(name) + r' = (\S+) .*?op_name="([^"]+)"', hlo)
    where = f'{match.group(1)}  {match.group(2)[-80:]}' if match else ''
    print(f'  {ms:8.1f} ms  {name:28s} {where}')


if __name__ == '__main__':
  main()
