"""The palette an Image GPT training run uses, and where it is kept.

    centers, new = run_palette.choose_palette(config, train_source, workdir)  # writes nothing
    ...                                                  # every other check of the run
    if new:
      run_palette.save_palette_once(io.join(workdir, 'palette.npy'), centers)

The palette is saved in the workdir so that its outputs hold everything `complete`, `probe`
and a later `init_from` need, and so that a resumed run is held to the colours its
checkpoints learned.
"""

from __future__ import annotations

import jax
import numpy as np

from igpt_jax import palette as palette_lib
from vision_core import data, io
from vision_core.errors import UserInputError


def choose_palette(config, source, workdir: str, *,
                   resuming: bool = False) -> tuple[np.ndarray, bool]:
  """The run's palette, and whether it is new to the workdir (to be saved as its
  `palette.npy`); writes nothing.

  `config.palette`, else the palette beside `init_from`, else the workdir's saved one (a
  resumed run), else one fitted on training pixels. A saved palette that differs from the
  configured one is an error: the workdir's checkpoints learned the saved colours.
  `resuming` (the workdir has checkpoints): `init_from` is not looked at, as its weights are
  not read; its palette may have been changed, moved or deleted since the run started.
  """
  saved = io.join(workdir, 'palette.npy')
  wanted, origin = None, ''
  if config.palette:
    wanted = palette_lib.load_palette(config.palette, num_clusters=config.vocab_size)
    origin = f'palette={config.palette}'
  elif config.init_from and resuming:
    if not io.exists(saved):  # A palette fitted now would not be the one it learned.
      raise UserInputError(f'{saved}: missing, and a resumed run does not read init_from; '
                           'pass the palette this run started with (--config.palette=...).')
  elif config.init_from:  # The weights only make sense with the palette they learned.
    beside, looked = _palette_beside(config.init_from)
    if beside:
      wanted = palette_lib.load_palette(beside, num_clusters=config.vocab_size)
      origin = f'init_from={config.init_from} (its {beside})'
    elif not io.exists(saved):
      raise UserInputError(f'init_from={config.init_from}: pass the palette those weights '
                           f'were trained with (--config.palette=...); none of '
                           f'{", ".join(looked)} exists.')
  if io.exists(saved):
    centers = palette_lib.load_palette(saved, num_clusters=config.vocab_size)
    if wanted is not None and not np.array_equal(centers, wanted):
      raise UserInputError(f'{saved}: this workdir\'s palette differs from the one of '
                           f'{origin}; resume with the same palette, or use a new workdir.')
    return centers, False
  if wanted is None:
    rng = np.random.default_rng(config.seed)
    idx = rng.choice(len(source), min(config.palette_fit_images, len(source)), replace=False)
    resize = data.parse_preprocess(palette_lib.preprocess_spec(config.image_size))
    pixels = np.stack([resize(source[int(i)])['image'] for i in idx])
    wanted = palette_lib.fit_palette(pixels, num_clusters=config.vocab_size, seed=config.seed,
                                     steps=config.palette_fit_steps)
  return wanted, True


def _palette_beside(init_from: str) -> tuple[str | None, list[str]]:
  """The palette file beside the weights (in their folder, or in a folder given as weights):
  a run's `palette.npy`, OpenAI's `kmeans_centers.npy` (download.py puts it beside the
  checkpoint) or HF's `preprocessor_config.json`. Returns (the first that exists, all)."""
  path = io.abspath(init_from)
  folder = path if io.isdir(path) else io.dirname(path)
  looked = [io.join(folder, name) for name in
            ('palette.npy', 'kmeans_centers.npy', 'preprocessor_config.json')]
  return next((p for p in looked if io.exists(p)), None), looked


def save_palette_once(path: str, centers: np.ndarray) -> None:
  """Every process fits the same palette (same seed, same images); the first one writes it."""
  if jax.process_index() == 0:
    palette_lib.save_palette(path, centers)
