"""Fingerprints of arrays: 64 bits per array that change when any element's bits change.

A checkpoint records its arrays' fingerprints when it is saved, and a restore compares them
with the arrays it read: orbax's data files carry no checksum, so a flipped byte in one (a
disk, a copy between machines) otherwise restores silently as a wrong weight.

Computed where the arrays live, by a small jitted program per array shape (one program for
the whole tree took 40 s to compile for ViT-B/16's 602 arrays): a sharded array is
fingerprinted shard by shard and the partial sums are added across devices (and hosts), so
nothing is gathered onto one host and every process gets the same value. Integer sums
modulo 2**32 do not depend on the order they are added in, so the value is the same on any
backend, mesh or sharding of the same array.

Each array's bits are read as 32-bit words w[i] (i the flat row-major index) and

  a = sum_i w[i] * (2i + 1)            mod 2**32
  b = sum_i mix(w[i] ^ mix(i))          mod 2**32   (mix: murmur3's 32-bit finaliser)

`a` changes whenever exactly one word changes (an odd factor is invertible modulo 2**32),
so every single flipped bit is caught; `b` is non-linear, so changes that cancel in `a` are
caught with probability 1 - 2**-32. It is a check against damage, not against tampering.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from vision_core import sharding

# Written beside the fingerprints it describes, so a later change of formula can tell them
# apart.
FORMAT = 'vision_core.fingerprint/1: murmur3-mixed sums of 32-bit words'


def _words(x: jax.Array) -> jax.Array:
  """The bits of `x` as uint32 words: one per element, two per 8-byte element ([..., 2])."""
  if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if jnp.issubdtype(x.dtype, jnp.complexfloating):
    x = jnp.stack([jnp.real(x), jnp.imag(x)], axis=-1)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = x.dtype.itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size in (1, 2):
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f'uint{8 * size}')).astype(jnp.uint32)
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # adds a trailing axis of 2
  raise ValueError(f'cannot fingerprint an array of dtype {x.dtype}')


def _mix(z: jax.Array) -> jax.Array:
  """murmur3's finaliser: every input bit flips each output bit with probability ~1/2."""
  z = z ^ (z >> 16)
  z = z * jnp.uint32(0x85EBCA6B)
  z = z ^ (z >> 13)
  z = z * jnp.uint32(0xC2B2AE35)
  return z ^ (z >> 16)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
  """Row-major index of each element, uint32 (wrapping past 2**32 elements), as iotas so a
  sharded array is never reshaped (a reshape of a sharded axis would move data)."""
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(
        stride % 2**32)
    stride *= shape[axis]
  return index


def _fingerprint(x: jax.Array) -> jax.Array:
  """[2] uint32: (a, b) of the module docstring."""
  words = _words(x)
  index = _flat_index(words.shape)
  a = jnp.sum(words * (index * jnp.uint32(2) + jnp.uint32(1)), dtype=jnp.uint32)
  b = jnp.sum(_mix(words ^ _mix(index)), dtype=jnp.uint32)
  return jnp.stack([a, b])


_fingerprint_jit = jax.jit(_fingerprint)


def fingerprints(tree: Any) -> dict[str, str]:
  """`{'params/Transformer/cls': '3f2a...', ...}`: 16 hex digits for each array leaf of
  `tree` (jax or numpy arrays; other leaves are skipped), keyed like `sharding.path_str`.

  Every process of a multi-host run must call it (its programs span all devices)."""
  paths, leaves = [], []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if hasattr(leaf, 'shape') and hasattr(leaf, 'dtype'):
      paths.append(sharding.path_str(path))
      leaves.append(leaf)
  # One program in flight at a time, after the arrays are computed: XLA:CPU's in-process
  # collectives (several CPU devices) deadlock when many small programs with all-reduces are
  # queued at once (200 sharded arrays on a (4, 2) mesh: every run aborted after the 40 s
  # rendezvous timeout). On an accelerator that costs a sync per array.
  jax.block_until_ready(leaves)
  values = [jax.device_get(_fingerprint_jit(x)) for x in leaves]
  return {path: f'{int(a):08x}{int(b):08x}' for path, (a, b) in zip(paths, values)}
