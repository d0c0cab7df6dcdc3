"""ViT-Score: how much of a classifier's view of an image survives compression.

The study's definition: take the top-k classes of a ViT's logits for the original image and
for its reconstruction; the ViT-Score is the fraction of shared classes,

  vit_score = |topk(original) & topk(reconstruction)| / k   in [0, 1].

Identical images score 1. Two unrelated images score k / N on average (N classes): the
chance level, 0.1 for k=100 of ImageNet's 1000 classes, 0.01 for k=10. A score near the
chance level means the reconstruction carries nothing the classifier recognises.

The study names two refinements, computed in the same pass:
  * weighted: the shared classes weighted by the original's softmax probability,
    sum_{c in shared} p(c) / sum_{c in topk(original)} p(c); confident classes count more,
    the long tail of the top 100 little. 1 for identical images; its chance level depends on
    how peaked the original's distribution is (it is k / N only for a flat one).
  * cosine: the cosine similarity of the two pre-logit embeddings (the features the head
    reads), in [-1, 1]; 1 for identical images.

Inputs are `[B, H, W, 3]` RGB in [0, 255] (uint8 or float), scaled to the ViT's [-1, 1].
"""

from __future__ import annotations

from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np

from vision_core.errors import UserInputError
from vision_core.images import check_batch
from vit_jax.metrics import checks


def top_k_overlap(logits_a: jax.Array, logits_b: jax.Array, k: int) -> jax.Array:
  """|topk(a) & topk(b)| / k for `[B, N]` logits -> `[B]`."""
  _, idx_a = jax.lax.top_k(logits_a, k)
  _, idx_b = jax.lax.top_k(logits_b, k)
  in_b = _membership(idx_b, logits_b.shape[-1])
  return jnp.take_along_axis(in_b, idx_a, axis=-1).sum(-1) / k


def weighted_top_k_overlap(logits_a: jax.Array, logits_b: jax.Array, k: int) -> jax.Array:
  """Shared top-k classes weighted by softmax(a): sum over shared / sum over topk(a)."""
  probs = jax.nn.softmax(logits_a.astype(jnp.float32), axis=-1)
  _, idx_a = jax.lax.top_k(logits_a, k)
  _, idx_b = jax.lax.top_k(logits_b, k)
  in_b = _membership(idx_b, logits_b.shape[-1])
  p_top = jnp.take_along_axis(probs, idx_a, axis=-1)
  shared = jnp.take_along_axis(in_b, idx_a, axis=-1)
  return (p_top * shared).sum(-1) / p_top.sum(-1)


def _membership(indices: jax.Array, num_classes: int) -> jax.Array:
  """`[B, k]` class indices -> `[B, N]` float 0/1 mask."""
  rows = jnp.arange(indices.shape[0])[:, None]
  return jnp.zeros((indices.shape[0], num_classes), jnp.float32).at[rows, indices].set(1.0)


def cosine_similarity(a: jax.Array, b: jax.Array) -> jax.Array:
  """Row-wise cosine similarity of `[B, D]` embeddings -> `[B]` (0 where one is all zero)."""
  a = a.astype(jnp.float32)
  b = b.astype(jnp.float32)
  norms = jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1)
  return jnp.where(norms > 0, (a * b).sum(-1) / jnp.where(norms > 0, norms, 1), 0.0)


def num_classes_of(model, params) -> int:
  """The class count of a ViT: its head's output size (from params when present)."""
  head = params.get('head') if hasattr(params, 'get') else None
  if head is not None and 'bias' in head:
    return int(np.shape(head['bias'])[-1])
  if getattr(model, 'num_classes', None):
    return int(model.num_classes)
  raise UserInputError('vit_score: the model has no classification head (num_classes is '
                       'unset and params have no `head`); ViT-Score needs logits.')


def _logits_and_prelogits(model, params, images):
  prelogits = model.apply({'params': params}, images, train=False, return_prelogits=True)
  head = params['head']
  logits = prelogits.astype(jnp.float32) @ head['kernel'].astype(jnp.float32) + head['bias']
  return logits, prelogits


def make_vit_score_fn(*, model, k: int, image_size: int | None = None
                      ) -> Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]:
  """A jit-compiled `fn(params, original, reconstruction) -> {top_k, weighted, cosine,
  prelogits_original, prelogits_reconstruction}` (scores `[B]`, pre-logits `[B, D]`).

  Both batches are `[B, H, W, 3]` in [0, 255]; if `image_size` is set they are resized
  (bilinear, antialiased) to `image_size` x `image_size` first. One forward pass per batch:
  the logits come from the pre-logits and the head. Under a mesh, shard the batches over
  'data' and replicate `params`; the function follows the input sharding.
  """
  def fn(params, original, reconstruction):
    both = jnp.concatenate([original, reconstruction]).astype(jnp.float32)
    if image_size is not None:
      both = jax.image.resize(both, (both.shape[0], image_size, image_size, both.shape[-1]),
                              method='bilinear', antialias=True)
    both = (both - 127.5) / 127.5
    logits, prelogits = _logits_and_prelogits(model, params, both)
    b = original.shape[0]
    return {
        'top_k': top_k_overlap(logits[:b], logits[b:], k),
        'weighted': weighted_top_k_overlap(logits[:b], logits[b:], k),
        'cosine': cosine_similarity(prelogits[:b], prelogits[b:]),
        'prelogits_original': prelogits[:b],
        'prelogits_reconstruction': prelogits[b:],
    }
  return jax.jit(fn)


_FNS: dict[tuple, tuple] = {}


def _cached_fn(model, k, image_size):
  # Flax modules holding ConfigDicts are not hashable: key on identity, keep the model alive.
  key = (id(model), k, image_size)
  if key not in _FNS or _FNS[key][0] is not model:
    _FNS[key] = (model, make_vit_score_fn(model=model, k=k, image_size=image_size))
  return _FNS[key][1]


def check_pair(original, reconstruction, k: int, num_classes: int) -> None:
  """Raises `UserInputError` for mismatched shapes or dtypes, bad k or non-finite pixels."""
  check_batch(original, name='vit_score original', channels=(3,))
  check_batch(reconstruction, name='vit_score reconstruction', channels=(3,))
  if np.shape(original) != np.shape(reconstruction):
    raise UserInputError(
        f'vit_score: original has shape {np.shape(original)} but reconstruction has '
        f'{np.shape(reconstruction)}; they must match (resize the reconstruction first).')
  if np.shape(original)[0] == 0:
    raise UserInputError(f'vit_score: empty batch (shape {np.shape(original)}).')
  checks.check_dtypes(original, reconstruction, metric='vit_score',
                      names=('original', 'reconstruction'))
  if (isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer))
      or not 1 <= k <= num_classes):
    raise UserInputError(
        f'vit_score: k={k!r} must be an integer with 1 <= k <= {num_classes} (the number of '
        'classes of the model head).')
  for name, x in (('original', original), ('reconstruction', reconstruction)):
    # The ViT sees x / 127.5 - 1: a [0, 1] or [-1, 1] batch would be scored as black images.
    checks.check_float_levels(x, metric='vit_score', name=name)
    checks.check_integer_levels(x, metric='vit_score', name=name)


def vit_scores(original, reconstruction, model, params, k: int = 100, *,
               image_size: int | None = None, batch_size: int = 64,
               mesh=None, return_prelogits: bool = False) -> dict[str, np.ndarray]:
  """All three scores per image pair: `{'top_k', 'weighted', 'cosine'}`, each `[B]` float;
  with `return_prelogits`, also the ViT's pre-logits of both images,
  `{'prelogits_original', 'prelogits_reconstruction'}` `[B, D]` (for a FID on them).

  Args:
    original, reconstruction: `[B, H, W, 3]` RGB in [0, 255], same shape.
    model: a `VisionTransformer` with a head; params: its parameters (`{'head': ...}`).
    k: number of top classes, 1 <= k <= number of classes (chance level k / N).
    image_size: resize to this square size first (e.g. the checkpoint's 224); None keeps
      the input size (it must suit the model's position embeddings).
    batch_size: pairs per forward pass (memory bound).
    mesh: optional `('data', 'model')` mesh; each chunk is sharded over 'data'.
  """
  original = checks.as_array(original, metric='vit_score', name='original')
  reconstruction = checks.as_array(reconstruction, metric='vit_score', name='reconstruction')
  check_pair(original, reconstruction, k, num_classes_of(model, params))
  if isinstance(batch_size, (bool, np.bool_)) or not isinstance(
      batch_size, (int, np.integer)) or batch_size < 1:
    raise UserInputError(f'vit_score: batch_size must be a positive integer, got {batch_size!r}.')
  if image_size is not None and (not isinstance(image_size, (int, np.integer))
                                 or image_size < 1):
    raise UserInputError(
        f'vit_score: image_size must be a positive integer or None, got {image_size!r}.')
  fn = _cached_fn(model, int(k), image_size)
  original = np.asarray(original)
  reconstruction = np.asarray(reconstruction)
  n = original.shape[0]
  step = batch_size
  if mesh is not None:
    from vision_core.mesh import data_size, replicated  # pylint: disable=g-import-not-at-top
    d = data_size(mesh)  # (first: a clear error for a mesh without a 'data' axis)
    params = jax.device_put(params, replicated(mesh))
    step = max(d, batch_size // d * d)
  out = {'top_k': [], 'weighted': [], 'cosine': []}
  if return_prelogits:
    out.update(prelogits_original=[], prelogits_reconstruction=[])
  for start in range(0, n, step):
    a, b = original[start:start + step], reconstruction[start:start + step]
    m = a.shape[0]
    if mesh is not None:
      from vision_core.mesh import shard_batch  # pylint: disable=g-import-not-at-top
      pad = -m % d
      if pad:
        a = np.concatenate([a, np.repeat(a[-1:], pad, 0)])
        b = np.concatenate([b, np.repeat(b[-1:], pad, 0)])
      a, b = shard_batch((a, b), mesh)
    try:
      scores = fn(params, a, b)
    except flax.errors.ScopeParamShapeError as e:
      size = original.shape[1:3] if image_size is None else (image_size, image_size)
      raise UserInputError(
          f'vit_score: images of {size[0]}x{size[1]} pixels do not fit the model\'s position '
          'embeddings; pass image_size= (the resolution the checkpoint was trained at, e.g. '
          f'224) to resize both batches to it. ({e})') from None
    for key in out:
      out[key].append(np.asarray(scores[key])[:m])
  return {key: np.concatenate(v) for key, v in out.items()}


def vit_score(original, reconstruction, model, params, k: int = 100, **kwargs) -> np.ndarray:
  """The study's ViT-Score per pair, `[B]` in [0, 1]: shared top-k classes / k.

  See `vit_scores` for the arguments and for the weighted and cosine variants.
  """
  return vit_scores(original, reconstruction, model, params, k, **kwargs)['top_k']
