"""Machinery shared by the three model families (`vit_jax`, `igpt_jax`, `gan_jax`).

One home for what every family needs, so that none copies another:

- `vision_core.errors`: `UserInputError`, the exception for bad input a user can fix, and
  `cli_errors`, which turns it into a one-line message instead of a traceback.
- `vision_core.mesh`: the `('data', 'model')` device mesh, named shardings, batch placement,
  multi-host start-up.
- `vision_core.npz`: flat `'/'`-joined `.npz` parameter files (the official ViT layout), read
  without pickle and written atomically, plus tree comparison with readable mismatch reports.
- `vision_core.images`: image files and arrays in, validated `[B, H, W, C]` arrays out.
- `vision_core.io`: atomic file writes that never overwrite silently.
- `vision_core.data`: the input pipeline (image folders, TFDS, MNIST IDX, arrays -> preprocessing
  ops -> grain loaders: resumable shuffled train batches, masked eval batches covering each
  example once).
- `vision_core.checkpointing`: orbax checkpoints of state + data-iterator position, keep last N.
- `vision_core.metrics_log`: progress bar, metrics.jsonl, TensorBoard scalars
  (`vision_core.tfevents`), final JSON.
- `vision_core.sharding`: parameter sharding strategies (replicated, fsdp, tp, fsdp_tp).
- `vision_core.optim`: warmup + cosine/linear schedules, SGD/AdamW/Adam with clipping, label-
  smoothed cross entropy.
- `vision_core.seeds`: `check_seed`, seeds in [0, 2**32) (JAX keys and grain take 32 bits: a
  larger seed would silently repeat a smaller one).
- `vision_core.host_memory`: glibc told to keep freed memory, for train steps on the CPU.
"""
