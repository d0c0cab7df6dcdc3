"""The study's report files, rendered by the project's metric report (`vit_jax.assess_report`).

`report.md`: the study's header (images, generator, classifier, search), a per-method
summary (GAN latents vs JPEG at the same size: means and set-level FIDs), then the
assessment report of each method. `report.csv`: one row per (image, method), the
assessment columns. `figure.png`: original | reconstruction with the scores, for every
image and method.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np

SUMMARY = (  # (column, header, format)
    ('vit_score', 'ViT-Score', '{:.3f}'),
    ('vit_cosine', 'pre-logit cosine', '{:.3f}'),
    ('ssim', 'SSIM', '{:.4f}'),
    ('psnr', 'PSNR (dB)', '{:.2f}'),
    ('brisque_reconstruction', 'BRISQUE recon.', '{:.2f}'),
    ('bpp', 'bpp', '{:.3f}'),
    ('compression_ratio', 'ratio', '{:.1f}'),
)


def _fmt(value, spec: str = '{:.4g}') -> str:
  if value is None or not math.isfinite(float(value)):
    return 'n/a'
  return spec.format(float(value))


def _demote(markdown: str, levels: int = 2) -> list[str]:
  """The assessment's Markdown without its title, headings `levels` deeper."""
  lines = markdown.rstrip('\n').split('\n')[1:]
  return [('#' * levels + l) if l.startswith('#') else l for l in lines]


def summary_table(methods: dict) -> list[str]:
  lines = ['| method | ' + ' | '.join(h for _, h, _ in SUMMARY) +
           ' | FID raw pixels | FID ViT pre-logits |',
           '|---|' + '---:|' * (len(SUMMARY) + 2)]
  for label, (_, cols, fids) in methods.items():
    cells = [_fmt(np.nanmean(cols[c]) if c in cols and np.isfinite(cols[c]).any() else None, f)
             for c, _, f in SUMMARY]
    cells += [_fmt(fids.get('raw_pixels'), '{:.1f}'), _fmt(fids.get('vit_prelogits'), '{:.3f}')]
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  return lines


def write_all(folder: str, methods: dict, *, header: list[str], info: dict) -> dict:
  """Writes report.md, report.csv and figure.png into `folder`; returns their paths.

  Args:
    methods: label -> (pairs, columns, fids), as `study_scores.score` returns them.
    header: Markdown lines describing the run.
    info: what `vit_jax.assess_report.markdown` states (model, checkpoint, k, ...).
  """
  from vit_jax import assess_report  # pylint: disable=g-import-not-at-top
  lines = ['# Study report', ''] + header + ['', '## Summary (means over images)', '']
  lines += summary_table(methods)
  for label, (pairs, cols, fids) in methods.items():
    lines += ['', f'## {label}', ''] + _demote(assess_report.markdown(pairs, cols, fids, info))
  all_pairs, all_cols = [], {}
  for label, (pairs, cols, _) in methods.items():
    short = label.split()[0]
    all_pairs += [dataclasses.replace(p, name=f'{p.name} ({short})') for p in pairs]
  keys = set.intersection(*(set(cols) for _, cols, _ in methods.values()))
  for key in keys:
    all_cols[key] = np.concatenate([cols[key] for _, cols, _ in methods.values()])
  order = np.argsort([i % len(next(iter(methods.values()))[0])
                      for i in range(len(all_pairs))], kind='stable')
  all_pairs = [all_pairs[i] for i in order]  # each image's methods next to each other
  all_cols = {k: v[order] for k, v in all_cols.items()}
  paths = {'markdown': os.path.join(folder, 'report.md'),
           'csv': os.path.join(folder, 'report.csv'),
           'figure': os.path.join(folder, 'figure.png')}
  with open(paths['markdown'], 'w', encoding='utf-8') as f:
    f.write('\n'.join(lines) + '\n')
  with open(paths['csv'], 'w', encoding='utf-8') as f:
    f.write(assess_report.csv_text(all_pairs, all_cols))
  with open(paths['figure'], 'wb') as f:
    f.write(assess_report.figure_png(all_pairs, all_cols))
  return paths
