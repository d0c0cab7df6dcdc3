"""The study's classifier and scoring: `vit_jax.assess.score_pairs` on (original, method) pairs.

Every number of the report comes from the project's metric report (`vit_jax.assess`, issue
4): ViT-Score (top-k overlap, weighted variant, pre-logit cosine), SSIM, MSE, PSNR, the
study's per-image pixel-row FID, set-level FID on raw pixels and on ViT pre-logits,
BRISQUE (when OpenCV's model files are given), compression ratio and bits per pixel of
the compressed file. This module only loads the classifier and builds the pairs.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vision_core.errors import UserInputError
from vit_jax import checkpoint as vit_checkpoint


@dataclasses.dataclass(frozen=True)
class Classifier:
  """A ViT classifier: module, float32 params, input resolution, class names."""
  model: Any
  params: Any
  resolution: int
  class_names: list

  @property
  def model_name(self) -> str:
    return str(getattr(self.model, 'model_name', None) or 'ViT')

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def check_k(self, k: int) -> None:
    if not 1 <= k <= self.num_classes:
      raise UserInputError(f'vit_score_k={k}: expected 1 <= k <= {self.num_classes} (the '
                           'classifier\'s number of classes).')


def load_classifier(checkpoint: str, *, model_name: str = '', resolution: int = 0,
                    model_field: str = '--config.vit_model') -> Classifier:
  """Loads an official-layout ViT npz or an HF ViT save (float16 storage is converted to
  float32).

  The model comes from the `model.json` that `vit_jax.main` writes beside its npz, or from
  the zoo name `model_name` (e.g. ViT-B_16 for the official checkpoints), else from its
  shapes; `model_field` is the config field that gives that name, for the error messages.
  """
  from vit_jax import predict  # pylint: disable=g-import-not-at-top
  if not vit_checkpoint.is_present(checkpoint):
    raise UserInputError(f'vit_checkpoint: {checkpoint} does not exist.')
  model, params, names, res = predict.load_model(
      checkpoint, model_name=model_name or None, resolution=resolution or None, labels=None,
      model_arg=model_field)
  params = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), params)
  return Classifier(model, params, int(res), list(names))


def brisque_files(model: str, range_file: str) -> tuple[tuple[str, str] | None, str]:
  """((model, range) or None, why BRISQUE is absent)."""
  if not model and not range_file:
    return None, ('no BRISQUE model given: config brisque_model / brisque_range, OpenCV\'s '
                  'brisque_model_live.yml and brisque_range_live.yml')
  for field, path in (('brisque_model', model), ('brisque_range', range_file)):
    if not path or not os.path.isfile(path):
      raise UserInputError(f'{field}: {path or "(empty)"} does not exist; give both BRISQUE '
                           'files or neither.')
  return (model, range_file), ''


def make_pairs(names, originals, reconstructions, *, original_paths, reconstruction_paths,
               compressed_paths, notes) -> list:
  """`vit_jax.assess_io.Pair`s from in-memory uint8 `[S, S, C]` images and their files."""
  from vit_jax import assess_io  # pylint: disable=g-import-not-at-top
  return [assess_io.Pair(name=n, original_path=op, reconstruction_path=rp,
                         original=np.asarray(o, np.uint8), reconstruction=np.asarray(r, np.uint8),
                         notes=list(nt), compressed_path=cp)
          for n, o, r, op, rp, cp, nt in zip(names, originals, reconstructions, original_paths,
                                             reconstruction_paths, compressed_paths, notes)]


def score(pairs, classifier: Classifier, *, k: int, brisque=None, mesh=None):
  """(columns: name -> `[n]` array, set-level FIDs) for the pairs of one method."""
  from vit_jax import assess  # pylint: disable=g-import-not-at-top
  return assess.score_pairs(pairs, model=classifier.model, params=classifier.params,
                            image_size=classifier.resolution, k=k, brisque_files=brisque,
                            mesh=mesh)
