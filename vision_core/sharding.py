"""Parameter sharding rules over the `('data', 'model')` mesh, selectable by name:

- 'replicated': every device holds all parameters (plain data parallelism; the default).
- 'fsdp': each large array is split over 'data' along its largest evenly divisible axis
  (ZeRO-3 style; XLA all-gathers it for the forward pass and reduce-scatters the gradient).
- 'tp': tensor parallelism over 'model' by parameter path (Megatron layout: attention heads
  and the MLP hidden axis are split, so each block needs one all-reduce after attention and
  one after the MLP).
- 'fsdp_tp': both.

Rules apply to any pytree whose paths end like the parameters (optimizer states included:
optax's `mu/Transformer/...` matches the same rules), so one call shards params and
optimizer state alike. A rule whose axis does not divide evenly falls back to replication.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vision_core import mesh as mesh_lib
from vision_core.errors import UserInputError

STRATEGIES = ('replicated', 'fsdp', 'tp', 'fsdp_tp')

# (regex searched in the '/'-joined path, spec per axis). Flax names of `nn.Dense` /
# `nn.MultiHeadDotProductAttention` ([D, heads, head_dim] q/k/v, [heads, head_dim, D] out).
TRANSFORMER_TP_RULES: tuple[tuple[str, tuple], ...] = (
    (r'(query|key|value)/kernel$', (None, 'model', None)),
    (r'(query|key|value)/bias$', ('model', None)),
    (r'Attention[^/]*/out/kernel$', ('model', None, None)),
    (r'Mlp[^/]*/Dense_0/kernel$', (None, 'model')),
    (r'Mlp[^/]*/Dense_0/bias$', ('model',)),
    (r'Mlp[^/]*/Dense_1/kernel$', ('model', None)),
)


def path_str(path: Sequence[Any]) -> str:
  """A jax key path as 'a/b/0/c'."""
  parts = []
  for key in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def _tp_spec(path: str, shape: tuple[int, ...], mesh: Mesh, rules,
             unsplit: list[str] | None = None) -> list:
  """The rule's spec for `path`; axes that do not divide are replicated, and said in
  `unsplit` as 'path axis i (size)'."""
  spec = [None] * len(shape)
  for pattern, rule in rules:
    if re.search(pattern, path):
      if len(rule) != len(shape):
        continue
      for axis, name in enumerate(rule):
        if name is not None and shape[axis] % mesh.shape[name] == 0:
          spec[axis] = name
        elif name is not None and unsplit is not None:
          unsplit.append(f'{path} axis {axis} ({shape[axis]})')
      break
  return spec


def _fsdp_spec(spec: list, shape: tuple[int, ...], mesh: Mesh, min_size: int) -> list:
  n = mesh.shape.get('data', 1)  # (a mesh of the user's without one: nothing to split over)
  if n == 1 or int(np.prod(shape)) < min_size:
    return spec
  free = [a for a in range(len(shape)) if spec[a] is None and shape[a] % n == 0]
  if free:
    spec[max(free, key=lambda a: shape[a])] = 'data'
  return spec


def partition_specs(tree: Any, mesh: Mesh, *, strategy: str = 'replicated',
                    tp_rules: Sequence[tuple[str, tuple]] = TRANSFORMER_TP_RULES,
                    fsdp_min_size: int = 2 ** 14) -> Any:
  """A `PartitionSpec` per leaf of `tree` (arrays or `ShapeDtypeStruct`s)."""
  if strategy not in STRATEGIES:
    raise UserInputError(f'sharding strategy {strategy!r}: expected one of '
                         f'{", ".join(STRATEGIES)}.')
  def leaf_spec(path, leaf):
    shape = tuple(np.shape(leaf))
    spec = [None] * len(shape)
    if 'tp' in strategy and mesh.shape.get('model', 1) > 1:
      spec = _tp_spec(path_str(path), shape, mesh, tp_rules)
    if 'fsdp' in strategy:
      spec = _fsdp_spec(spec, shape, mesh, fsdp_min_size)
    return P(*spec)
  return jax.tree_util.tree_map_with_path(leaf_spec, tree)


def replication_note(params: Any, mesh: Mesh, *, strategy: str,
                     tp_rules: Sequence[tuple[str, tuple]] = TRANSFORMER_TP_RULES,
                     fsdp_min_size: int = 2 ** 14) -> str | None:
  """What `strategy` was chosen for but does not do on `mesh` for `params`, in one line, or
  None: the tensor-parallel rules' axes that do not divide by the 'model' axis (e.g. 12
  heads over 8 devices), or FSDP that splits no array over 'data'. Those arrays are
  replicated: correct, but a run that chose the strategy to fit in memory should know."""
  notes = []
  if 'tp' in strategy and mesh.shape.get('model', 1) > 1:
    unsplit = []
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
      _tp_spec(path_str(path), tuple(np.shape(leaf)), mesh, tp_rules, unsplit)
    if unsplit:
      notes.append(f"{len(unsplit)} array axes that tensor parallelism splits over 'model' "
                   f"({mesh.shape['model']} devices) do not divide by it and are replicated "
                   f'(e.g. {unsplit[0]}): pick a model axis that divides the heads and the '
                   'MLP width')
  if 'fsdp' in strategy and mesh.shape.get('data', 1) > 1:
    specs = partition_specs(params, mesh, strategy='fsdp', fsdp_min_size=fsdp_min_size)
    if not any('data' in spec for spec in jax.tree.leaves(
        specs, is_leaf=lambda x: isinstance(x, P))):
      notes.append(f"FSDP splits no parameter over 'data' ({mesh.shape['data']} devices): "
                   f'each has fewer than {fsdp_min_size} values or no axis that divides by it')
  return f'sharding {strategy!r}: ' + '; '.join(notes) + '.' if notes else None


def named_shardings(tree: Any, mesh: Mesh, **kwargs) -> Any:
  """`partition_specs` as `NamedSharding`s on `mesh`, for `jax.jit(out_shardings=...)`."""
  mesh = mesh_lib.auto_axes(mesh)
  return jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                      partition_specs(tree, mesh, **kwargs),
                      is_leaf=lambda x: isinstance(x, P))


def describe(tree: Any, mesh: Mesh, **kwargs) -> list[str]:
  """'path shape -> spec' lines for the sharded leaves (for logs and tests)."""
  specs = partition_specs(tree, mesh, **kwargs)
  lines = []
  for (path, leaf), spec in zip(jax.tree_util.tree_flatten_with_path(tree)[0],
                                jax.tree.leaves(specs, is_leaf=lambda x: isinstance(x, P))):
    if any(s is not None for s in spec):
      lines.append(f'{path_str(path)} {tuple(np.shape(leaf))} -> {spec}')
  return lines
