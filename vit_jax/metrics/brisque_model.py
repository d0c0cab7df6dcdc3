"""BRISQUE regression models: read OpenCV's YAML or libsvm's text format, without OpenCV.

A BRISQUE model is an epsilon-SVR with an RBF kernel over 36 features, plus the per-feature
min/max table that maps raw features to [-1, 1] before prediction:

  score = sum_i alpha_i * exp(-gamma * ||x - sv_i||^2) - rho,   x = scaled features.

Both OpenCV (`cv::ml::SVM`, EPS_SVR) and libsvm (`epsilon_svr`) use this sign convention
(the decision value minus rho), so the two formats describe the same function.

Files read here:
  * OpenCV: `brisque_model_live.yml` (`opencv_ml_svm:` with `support_vectors`,
    `decision_functions` [`rho`, `alpha`, optional `index`]) and `brisque_range_live.yml`
    (`range: !!opencv-matrix`, 2 x 36: row 0 the minima, row 1 the maxima).
  * libsvm: a text model (`svm_type epsilon_svr`, `kernel_type rbf`, `gamma`, `rho`, `SV`
    then one `alpha index:value ...` line per support vector) and, for the range, either the
    OpenCV YAML above or an `svm-scale -s` range file (`x`, `-1 1`, then `index min max`).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from vision_core.errors import UserInputError

NUM_FEATURES = 36
_NUMBER = r'[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?'


@dataclasses.dataclass(frozen=True)
class BrisqueModel:
  """An RBF epsilon-SVR and its feature scaling table (all float64 numpy arrays).

  Attributes:
    support_vectors: `[S, 36]`, in the scaled [-1, 1] feature space.
    alpha: `[S]` dual coefficients.
    rho: the offset subtracted from the decision value.
    gamma: RBF kernel width, K(x, y) = exp(-gamma * ||x - y||^2).
    feature_min: `[36]` raw-feature minima (mapped to -1).
    feature_max: `[36]` raw-feature maxima (mapped to +1).
  """
  support_vectors: np.ndarray
  alpha: np.ndarray
  rho: float
  gamma: float
  feature_min: np.ndarray
  feature_max: np.ndarray


def _read_text(path: str | os.PathLike, what: str) -> str:
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: no such BRISQUE {what} file.')
  with open(path, 'r', encoding='utf-8', errors='replace') as f:
    return f.read()


def _numbers(text: str) -> np.ndarray:
  return np.asarray([float(t) for t in re.findall(_NUMBER, text)], np.float64)


def _scalar_field(text: str, key: str, path: str) -> str:
  m = re.search(rf'^\s*{key}\s*:\s*(\S+)', text, re.MULTILINE)
  if m is None:
    raise UserInputError(f'{path}: field `{key}` not found; is this an OpenCV SVM YAML file?')
  return m.group(1)


def _bracket_block(text: str, start: int, path: str, key: str) -> tuple[str, int]:
  """The text inside the `[ ... ]` that opens at or after `start`, and the index after it."""
  open_at = text.find('[', start)
  close_at = text.find(']', open_at)
  if open_at < 0 or close_at < 0:
    raise UserInputError(f'{path}: field `{key}`: expected a [ ... ] list of numbers.')
  return text[open_at + 1:close_at], close_at + 1


def read_opencv_svm(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, float, float]:
  """Reads an OpenCV `cv::ml::SVM` YAML file: (support_vectors, alpha, rho, gamma)."""
  path = os.fspath(path)
  text = _read_text(path, 'model')
  if 'opencv_ml_svm' not in text:
    raise UserInputError(f'{path}: not an OpenCV SVM model (no `opencv_ml_svm:` section).')
  svm_type = _scalar_field(text, 'svmType', path)
  if svm_type != 'EPS_SVR':
    raise UserInputError(f'{path}: svmType is {svm_type}; BRISQUE needs EPS_SVR.')
  kernel = re.search(r'kernel\s*:\s*\n\s*type\s*:\s*(\S+)', text)
  if kernel is None or kernel.group(1) != 'RBF':
    found = kernel.group(1) if kernel else 'missing'
    raise UserInputError(f'{path}: kernel type is {found}; BRISQUE needs RBF.')
  gamma = float(_scalar_field(text, 'gamma', path))
  var_count = int(_scalar_field(text, 'var_count', path))
  sv_total = int(_scalar_field(text, 'sv_total', path))
  sv_at = text.find('support_vectors:')
  df_at = text.find('decision_functions:')
  if sv_at < 0 or df_at < sv_at:
    raise UserInputError(f'{path}: expected `support_vectors:` then `decision_functions:`.')
  rows = []
  pos = sv_at
  while True:
    open_at = text.find('[', pos)
    if open_at < 0 or open_at > df_at:
      break
    block, pos = _bracket_block(text, pos, path, 'support_vectors')
    rows.append(_numbers(block))
  bad = [i for i, r in enumerate(rows) if r.size != var_count]
  if len(rows) != sv_total or bad:
    raise UserInputError(
        f'{path}: support_vectors: expected {sv_total} rows of {var_count} numbers, found '
        f'{len(rows)} rows' + (f' (row {bad[0]} has {rows[bad[0]].size})' if bad else '') + '.')
  support_vectors = np.stack(rows)
  df = text[df_at:]
  rho = float(_scalar_field(df, 'rho', path))
  alpha_at = re.search(r'^\s*alpha\s*:', df, re.MULTILINE)
  if alpha_at is None:
    raise UserInputError(f'{path}: decision_functions: field `alpha` not found.')
  alpha = _numbers(_bracket_block(df, alpha_at.end(), path, 'alpha')[0])
  index_at = re.search(r'^\s*index\s*:', df, re.MULTILINE)
  if index_at is not None:  # Present when a decision function uses a subset of the vectors.
    index = _numbers(_bracket_block(df, index_at.end(), path, 'index')[0]).astype(np.int64)
    if index.size != alpha.size or index.min(initial=0) < 0 or index.max(initial=0) >= sv_total:
      raise UserInputError(f'{path}: decision_functions: `index` does not match `alpha`.')
    support_vectors = support_vectors[index]
  if alpha.size != support_vectors.shape[0]:
    raise UserInputError(
        f'{path}: decision_functions: {alpha.size} alpha values for '
        f'{support_vectors.shape[0]} support vectors.')
  return support_vectors, alpha, rho, gamma


def read_opencv_range(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads OpenCV's BRISQUE range YAML (`range: !!opencv-matrix`, 2 x N): (min, max)."""
  path = os.fspath(path)
  text = _read_text(path, 'range')
  m = re.search(r'range\s*:\s*!!opencv-matrix', text)
  if m is None:
    raise UserInputError(f'{path}: no `range: !!opencv-matrix` entry (OpenCV BRISQUE range).')
  rows = int(_scalar_field(text[m.end():], 'rows', path))
  cols = int(_scalar_field(text[m.end():], 'cols', path))
  data_at = re.search(r'data\s*:', text[m.end():])
  if data_at is None:
    raise UserInputError(f'{path}: range matrix has no `data:` field.')
  data = _numbers(_bracket_block(text, m.end() + data_at.end(), path, 'data')[0])
  if rows != 2 or data.size != rows * cols:
    raise UserInputError(
        f'{path}: range: expected a 2 x {cols} matrix (min row, max row), found rows={rows} '
        f'and {data.size} numbers.')
  return data[:cols], data[cols:]


def read_svm_scale_range(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
  """Reads an `svm-scale -s` range file (`x`, `lower upper`, then `index min max` lines)."""
  path = os.fspath(path)
  lines = [l.split() for l in _read_text(path, 'range').splitlines() if l.strip()]
  if len(lines) < 3 or lines[0] != ['x'] or len(lines[1]) != 2:
    raise UserInputError(
        f'{path}: not an svm-scale range file (expected `x`, then `lower upper`, then '
        '`index min max` lines).')
  lower, upper = map(float, lines[1])
  if (lower, upper) != (-1.0, 1.0):
    raise UserInputError(f'{path}: scales to [{lower}, {upper}]; BRISQUE models use [-1, 1].')
  feature_min = np.full(NUM_FEATURES, np.nan)
  feature_max = np.full(NUM_FEATURES, np.nan)
  for fields in lines[2:]:
    index = int(fields[0])
    if len(fields) != 3 or not 1 <= index <= NUM_FEATURES:
      raise UserInputError(f'{path}: bad range line {" ".join(fields)!r}.')
    feature_min[index - 1], feature_max[index - 1] = float(fields[1]), float(fields[2])
  if np.isnan(feature_min).any():
    missing = np.nonzero(np.isnan(feature_min))[0] + 1
    raise UserInputError(f'{path}: no range for feature(s) {missing.tolist()}.')
  return feature_min, feature_max


def read_libsvm(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray, float, float]:
  """Reads a libsvm text model (epsilon_svr, rbf): (support_vectors, alpha, rho, gamma)."""
  path = os.fspath(path)
  lines = _read_text(path, 'model').splitlines()
  header = {}
  body_at = None
  for i, line in enumerate(lines):
    fields = line.split()
    if not fields:
      continue
    if fields[0] == 'SV':
      body_at = i + 1
      break
    header[fields[0]] = fields[1:]
  if body_at is None:
    raise UserInputError(f'{path}: not a libsvm model (no `SV` line).')
  for key, want in (('svm_type', 'epsilon_svr'), ('kernel_type', 'rbf')):
    got = ' '.join(header.get(key, ['missing']))
    if got != want:
      raise UserInputError(f'{path}: {key} is {got}; BRISQUE needs {want}.')
  for key in ('gamma', 'rho', 'total_sv'):
    if key not in header:
      raise UserInputError(f'{path}: header field `{key}` not found.')
  gamma, rho = float(header['gamma'][0]), float(header['rho'][0])
  total = int(header['total_sv'][0])
  rows = [l.split() for l in lines[body_at:] if l.strip()]
  if len(rows) != total:
    raise UserInputError(f'{path}: total_sv is {total} but {len(rows)} vectors follow `SV`.')
  alpha = np.empty(total)
  support_vectors = np.zeros((total, NUM_FEATURES))  # libsvm omits zero entries.
  for i, fields in enumerate(rows):
    alpha[i] = float(fields[0])
    for item in fields[1:]:
      index, _, value = item.partition(':')
      if not index.isdigit() or not 1 <= int(index) <= NUM_FEATURES:
        raise UserInputError(
            f'{path}: support vector {i}: bad entry {item!r} (expected index:value with '
            f'1 <= index <= {NUM_FEATURES}).')
      support_vectors[i, int(index) - 1] = float(value)
  return support_vectors, alpha, rho, gamma


def load_model(model: str | os.PathLike, range_file: str | os.PathLike) -> BrisqueModel:
  """Loads a BRISQUE model; the format (OpenCV YAML or libsvm text) is read from the file."""
  head = _read_text(model, 'model')[:4096]
  if 'opencv_ml_svm' in head:
    sv, alpha, rho, gamma = read_opencv_svm(model)
  elif re.search(r'^svm_type\s', head, re.MULTILINE):
    sv, alpha, rho, gamma = read_libsvm(model)
  else:
    raise UserInputError(
        f'{os.fspath(model)}: neither an OpenCV SVM YAML (`opencv_ml_svm:`) nor a libsvm '
        'text model (`svm_type ...`).')
  range_head = _read_text(range_file, 'range')[:4096]
  if 'opencv-matrix' in range_head:
    feature_min, feature_max = read_opencv_range(range_file)
  else:
    feature_min, feature_max = read_svm_scale_range(range_file)
  for name, n in (('support vectors', sv.shape[1]), ('range', feature_min.size)):
    if n != NUM_FEATURES:
      raise UserInputError(
          f'{os.fspath(model)} / {os.fspath(range_file)}: {name} have {n} features; '
          f'BRISQUE has {NUM_FEATURES}.')
  if np.any(feature_max <= feature_min):
    bad = int(np.nonzero(feature_max <= feature_min)[0][0])
    raise UserInputError(
        f'{os.fspath(range_file)}: feature {bad}: max {feature_max[bad]} <= min '
        f'{feature_min[bad]}.')
  return BrisqueModel(support_vectors=sv, alpha=alpha, rho=rho, gamma=gamma,
                      feature_min=feature_min, feature_max=feature_max)
