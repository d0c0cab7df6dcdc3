"""The study's report: `report.md`, `report.csv` and `figure.png` in one folder.

One row per (image, method); methods are the GAN latent file and the JPEG baseline at the
same size. Set-level values (raw-pixel FID, means) close the table. Files are written into
the study's staging folder, which `gan_jax.study` publishes atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os

import numpy as np

COLUMNS = (  # (key, header, format)
    ('vit_score', 'ViT-Score', '{:.3f}'),
    ('vit_cosine', 'ViT cos', '{:.3f}'),
    ('top1_same', 'top-1 same', '{:.0f}'),
    ('ssim', 'SSIM', '{:.4f}'),
    ('mse', 'MSE', '{:.2f}'),
    ('psnr', 'PSNR dB', '{:.2f}'),
    ('brisque', 'BRISQUE', '{:.2f}'),
    ('bytes', 'bytes', '{:.0f}'),
    ('bpp', 'bpp', '{:.3f}'),
    ('ratio', 'ratio (raw)', '{:.1f}'),
)


def _fmt(fmt: str, value) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return '-'
  return fmt.format(value)


def rows(names, methods: dict) -> list[dict]:
  """Flat rows: {'image', 'method', 'note', column: value} for every image x method."""
  out = []
  for i, name in enumerate(names):
    for method, result in methods.items():
      row = {'image': name, 'method': method, 'note': result['notes'][i]}
      for key, _, _ in COLUMNS:
        values = result['columns'][key]
        row[key] = None if values is None else float(values[i])
      row['brisque_original'] = (None if result['brisque_original'] is None
                                 else float(result['brisque_original'][i]))
      row['vit_top1'] = result['top1'][i]
      out.append(row)
  return out


def write_csv(path: str, table: list[dict]) -> None:
  keys = ['image', 'method'] + [k for k, _, _ in COLUMNS] + ['brisque_original', 'vit_top1',
                                                            'note']
  with open(path, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=keys)
    writer.writeheader()
    for row in table:
      writer.writerow({k: ('' if row.get(k) is None else row[k]) for k in keys})


def write_markdown(path: str, table: list[dict], methods: dict, *, header: list[str]) -> None:
  lines = ['# Study report', ''] + header + ['']
  heads = ['image', 'method'] + [h for _, h, _ in COLUMNS]
  lines.append('| ' + ' | '.join(heads) + ' |')
  lines.append('|' + '---|' * len(heads))
  for row in table:
    cells = [row['image'], row['method']] + [_fmt(f, row[k]) for k, _, f in COLUMNS]
    lines.append('| ' + ' | '.join(cells) + ' |')
  lines += ['', '## Per method (mean over images; FID over the set)', '',
            '| method | ViT-Score | SSIM | PSNR dB | bpp | FID (raw pixels) | BRISQUE |',
            '|---|---|---|---|---|---|---|']
  for method, result in methods.items():
    col = result['columns']
    mean = lambda k: (None if col[k] is None else float(np.mean(col[k])))  # pylint: disable=cell-var-from-loop
    lines.append(f'| {method} | {_fmt("{:.3f}", mean("vit_score"))} | '
                 f'{_fmt("{:.4f}", mean("ssim"))} | {_fmt("{:.2f}", mean("psnr"))} | '
                 f'{_fmt("{:.3f}", mean("bpp"))} | {_fmt("{:.1f}", result["fid_raw_pixels"])} | '
                 f'{_fmt("{:.2f}", mean("brisque"))} |')
  notes = sorted({row['note'] for row in table if row['note']})
  if notes:
    lines += ['', 'Notes: ' + '; '.join(notes) + '.']
  with open(path, 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')


def write_figure(path: str, names, originals, methods: dict, *, scale: int = 1) -> None:
  """A grid: one row per image, columns original | each method, scores under each."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  n, cols = len(names), 1 + len(methods)
  fig, axes = plt.subplots(n, cols, figsize=(2.6 * cols, 2.9 * n), squeeze=False)
  for i, name in enumerate(names):
    panels = [('original', originals[i], name)]
    for method, result in methods.items():
      c = result['columns']
      text = (f'ViT-Score {c["vit_score"][i]:.2f}  SSIM {c["ssim"][i]:.3f}\n'
              f'PSNR {c["psnr"][i]:.1f} dB  {c["bpp"][i]:.3f} bpp')
      panels.append((method, result['images'][i], text))
    for j, (title, image, text) in enumerate(panels):
      ax = axes[i, j]
      image = np.asarray(image)
      if scale > 1:
        image = image.repeat(scale, 0).repeat(scale, 1)
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray',
                interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      if i == 0:
        ax.set_title(title, fontsize=9)
      ax.set_xlabel(text, fontsize=7)
  fig.tight_layout()
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=100)
  plt.close(fig)
  with open(path, 'wb') as f:
    f.write(buffer.getvalue())


def write_all(folder: str, names, originals, methods: dict, *, header: list[str],
              scale: int = 1) -> dict:
  """Writes the three report files into `folder`; returns their paths."""
  table = rows(names, methods)
  paths = {k: os.path.join(folder, f) for k, f in
           (('markdown', 'report.md'), ('csv', 'report.csv'), ('figure', 'figure.png'))}
  write_csv(paths['csv'], table)
  write_markdown(paths['markdown'], table, methods, header=header)
  write_figure(paths['figure'], names, originals, methods, scale=scale)
  return paths
