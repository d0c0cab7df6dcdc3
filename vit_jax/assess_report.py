"""Renders the assessment: a Markdown report, a CSV table and a PNG figure (in memory)."""

from __future__ import annotations

import csv
import datetime
import io
import math

import numpy as np

from vit_jax import assess_io

# (column key, CSV header, Markdown header, format)
COLUMNS = (
    ('vit_score', 'vit_score', 'ViT-Score', '{:.3f}'),
    ('vit_score_weighted', 'vit_score_weighted', 'ViT-Score (weighted)', '{:.3f}'),
    ('vit_cosine', 'vit_prelogit_cosine', 'pre-logit cosine', '{:.4f}'),
    ('ssim', 'ssim', 'SSIM', '{:.4f}'),
    ('mse', 'mse', 'MSE', '{:.2f}'),
    ('psnr', 'psnr_db', 'PSNR (dB)', '{:.2f}'),
    ('pixel_row_fid', 'pixel_row_fid', 'FID (pixel rows)', '{:.1f}'),
    ('brisque_original', 'brisque_original', 'BRISQUE orig.', '{:.2f}'),
    ('brisque_reconstruction', 'brisque_reconstruction', 'BRISQUE recon.', '{:.2f}'),
    ('compression_ratio', 'compression_ratio', 'compression ratio', '{:.1f}'),
    ('bpp', 'bits_per_pixel', 'bpp', '{:.3f}'),
)


def _present(cols):
  return [c for c in COLUMNS if c[0] in cols]


def _fmt(value, spec):
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return 'n/a'
  if math.isinf(value):
    return 'inf'
  return spec.format(value)


def csv_text(pairs, cols) -> str:
  out = io.StringIO()
  writer = csv.writer(out, lineterminator='\n')
  present = _present(cols)
  writer.writerow(['image'] + [c[1] for c in present] + ['notes'])
  for i, p in enumerate(pairs):
    writer.writerow([p.name] + [repr(float(cols[c[0]][i])) for c in present]
                    + ['; '.join(p.notes)])
  return out.getvalue()


def markdown(pairs, cols, fids, info) -> str:
  present = _present(cols)
  now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')
  lines = ['# Image assessment report', '', f'{len(pairs)} image pairs, {now}.', '',
           '| image | ' + ' | '.join(c[2] for c in present) + ' |',
           '|---|' + '---:|' * len(present)]
  for i, p in enumerate(pairs):
    lines.append(f'| {p.name} | ' + ' | '.join(_fmt(float(cols[c[0]][i]), c[3])
                                                for c in present) + ' |')
  means = [_fmt(float(np.nanmean(np.where(np.isinf(cols[c[0]]), np.nan, cols[c[0]])))
                if np.isfinite(cols[c[0]]).any() else float('nan'), c[3]) for c in present]
  lines += ['| **mean** | ' + ' | '.join(means) + ' |', '']
  lines += ['## FID (whole set)', '']
  if not fids:
    lines.append('Not computed: FID compares two distributions and needs at least 2 pairs.')
  if 'vit_prelogits' in fids:
    lines.append(f'- FID on ViT pre-logit features ({info["model"]}, {len(pairs)} originals vs '
                 f'{len(pairs)} reconstructions): **{fids["vit_prelogits"]:.4f}**')
  if 'raw_pixels' in fids:
    lines.append(f'- FID on raw pixels (each image one {pairs[0].original.size}-value row, '
                 f'as the study computed it): **{fids["raw_pixels"]:.4f}**')
  elif fids:
    lines.append('- Raw-pixel FID: not computed (the images differ in size or channels).')
  lines += ['', 'Both are exact float64 Frechet distances; with fewer images than feature '
            'dimensions the covariances are rank-deficient, so compare these numbers only '
            'between runs on the same set.', '',
            'The per-image column "FID (pixel rows)" is the study\'s own definition, kept to '
            'reproduce its table: the Frechet distance between the rows of the original and '
            'the rows of the reconstruction (each row of W x C raw values one sample; '
            '`vit_jax.metrics.pixel_row_fid`). It is not an FID in the usual sense (no '
            'network features, one image per side) and is not comparable with Inception FIDs.',
            '']
  lines += ['## Conventions', '',
            '- Values: the 0-255 scale of 8-bit levels; SSIM (Gaussian window 11, sigma 1.5, '
            'K1 0.01, K2 0.03), PSNR and MSE with data_range 255, per image over all channels.',
            f'- Colour: {info.get("colour", assess_io.COLOUR_NOTE)}',
            '- Orientation: each file is turned upright by its EXIF orientation tag, as '
            "OpenCV's imread does.",
            f'- ViT-Score: top-{info["k"]} classes of {info["model"]} ({info["num_classes"]} '
            f'classes, checkpoint `{info["checkpoint"]}`) for the original and the '
            f'reconstruction, shared / {info["k"]}; chance level {info["k"]}/'
            f'{info["num_classes"]} = {info["k"] / info["num_classes"]:.3f}. Images are '
            f'resized (bilinear, antialiased) to {info["image_size"]}x{info["image_size"]} and '
            'scaled to [-1, 1]. Weighted: shared classes weighted by the original\'s softmax; '
            'cosine: of the pre-logit embeddings.',
            '- BRISQUE: ' + (f'model `{info["brisque"][0]}`, range `{info["brisque"][1]}`; '
                             'grey as OpenCV (15-bit luma), lower is better, clamped to '
                             '[0, 100].' if info['brisque'] else
                             'not computed (pass --brisque-model and --brisque-range).'),
            '- Compression ratio: raw 8-bit size (H x W x C bytes) / compressed file size; '
            'bits per pixel: 8 x file size / (H x W).']
  notes = [(p.name, n) for p in pairs for n in p.notes]
  if notes or info['ignored']:
    lines += ['', '## Notes', '']
    lines += [f'- {name}: {n}' for name, n in notes]
    lines += [f'- ignored (no original of that name): {f}' for f in info['ignored']]
  return '\n'.join(lines) + '\n'


def figure_png(pairs, cols, *, max_pairs: int = 48) -> bytes:
  """Original | reconstruction per row, the scores under each pair."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  shown = pairs[:max_pairs]
  fig, axes = plt.subplots(len(shown), 2, figsize=(7, 3.6 * len(shown)), squeeze=False)
  for i, p in enumerate(shown):
    for ax, image, title in ((axes[i, 0], p.original, f'{p.name}: original'),
                             (axes[i, 1], p.reconstruction, 'reconstruction')):
      ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap='gray', vmin=0,
                vmax=255, interpolation='nearest')
      ax.set_title(title, fontsize=9)
      ax.axis('off')
    parts = []
    for key, label in (('vit_score', 'ViT-Score'), ('ssim', 'SSIM'), ('psnr', 'PSNR'),
                       ('mse', 'MSE'), ('brisque_original', 'BRISQUE o'),
                       ('brisque_reconstruction', 'BRISQUE r'), ('bpp', 'bpp')):
      if key in cols:
        parts.append(f'{label} {_fmt(float(cols[key][i]), "{:.3g}")}')
    # Four scores per line: seven on one line are wider than the figure and were cut off.
    caption = '\n'.join('   '.join(parts[j:j + 4]) for j in range(0, len(parts), 4))
    # Centred on the figure, just under the row's images.
    where = matplotlib.transforms.blended_transform_factory(fig.transFigure,
                                                            axes[i, 0].transAxes)
    axes[i, 0].text(0.5, -0.06, caption, transform=where, ha='center', va='top', fontsize=8,
                    linespacing=1.5)
  if len(pairs) > max_pairs:
    fig.suptitle(f'first {max_pairs} of {len(pairs)} pairs (all are in report.csv)')
  fig.tight_layout()
  buf = io.BytesIO()
  fig.savefig(buf, format='png', dpi=80)
  plt.close(fig)
  return buf.getvalue()
