"""Random-access data sources: image folders, TFDS (array_record), MNIST IDX files, arrays.

Every source is a grain `RandomAccessDataSource`: `len(source)` examples, and
`source[i]` -> `{'image': uint8 [H, W, C], 'label': int32 scalar}`. Sources decode in
`__getitem__`, so grain's reader threads decode in parallel (PIL and zlib release the GIL).
`source.num_classes` and `source.class_names` describe the labels.

`get_source(dataset, split, ...)` picks the kind: a directory path is an image folder
(`{root}/{split}/{class}/*.jpg|png`), or MNIST if it holds `*-idx3-ubyte[.gz]` files;
anything else is a TFDS name read with `tfds.data_source` (no TensorFlow needed; the dataset
must already be prepared in array_record format, nothing is downloaded).
"""

from __future__ import annotations

import concurrent.futures
import gzip
import logging
import os
import struct
from typing import Any, Sequence

import numpy as np

from vision_core import images as images_lib
from vision_core.errors import UserInputError


class ArraySource:
  """In-memory `images [N, H, W, C] uint8` and `labels [N]`: small datasets and tests."""

  def __init__(self, images: np.ndarray, labels: np.ndarray, *,
               class_names: Sequence[str] | None = None, name: str = 'arrays'):
    images, labels = np.asarray(images), np.asarray(labels)
    images_lib.check_batch(images, name=f'{name} images', channels=(1, 3))
    if images.dtype != np.uint8:
      raise UserInputError(f'{name} images: dtype {images.dtype}; expected uint8 in [0, 255] '
                           '(what the preprocessing ops and value_range take).')
    if labels.shape != images.shape[:1]:
      raise UserInputError(f'{name}: {images.shape[0]} images but labels of shape '
                           f'{labels.shape}; expected [{images.shape[0]}].')
    # A float label such as 1.7 would be truncated to class 1, a negative one or one past the
    # class names would be one-hot encoded as no class at all: wrong losses, no error.
    if len(labels) and not (np.issubdtype(labels.dtype, np.integer) or (
        np.issubdtype(labels.dtype, np.floating) and np.array_equal(labels, np.round(labels)))):
      raise UserInputError(f'{name} labels: dtype {labels.dtype} with values such as '
                           f'{labels[:3].tolist()}; expected integer class indices.')
    n = int(labels.max()) + 1 if len(labels) else 0
    self.class_names = tuple(class_names) if class_names else tuple(map(str, range(n)))
    self.num_classes = len(self.class_names)
    if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
      raise UserInputError(f'{name} labels: found {int(labels.min())}..{int(labels.max())}; '
                           f'expected class indices in [0, {self.num_classes}) for the '
                           f'{self.num_classes} class names.')
    self.images, self.labels = images, labels.astype(np.int32)
    self.name = name

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return {'image': self.images[index], 'label': self.labels[index]}

  def __repr__(self) -> str:
    return f'ArraySource({self.name}, {len(self)} examples)'


def subfolders(directory: str | os.PathLike) -> list[str]:
  """Sorted names of the folders in `directory`: an image folder's splits, or a split's
  classes (label k is the k-th). Hidden folders are left out: `.ipynb_checkpoints`
  (Jupyter, Colab) or `.git` would become class 0 and shift every label."""
  directory = os.fspath(directory)
  return sorted(d for d in os.listdir(directory)
                if not d.startswith('.') and os.path.isdir(os.path.join(directory, d)))


class ImageFolderSource:
  """`{root}/{split}/{class}/*.{jpg,png,...}`: classes are the sorted sub-folder names.

  Args:
    root: dataset directory holding one folder per split.
    split: 'train', 'test', ...
    skip_bad_images: False (default): the first unreadable file stops the run with an error
      naming it. True: every file is decoded once up front (threaded) and unreadable ones
      are left out, counted in `self.skipped` (their paths) and logged.
    channels: 3 (RGB) or 1 (grayscale).
  """

  def __init__(self, root: str | os.PathLike, split: str, *, skip_bad_images: bool = False,
               channels: int = 3):
    root = os.fspath(root)
    split_dir = os.path.join(root, split)
    if not os.path.isdir(root):
      raise UserInputError(f'dataset folder {root} does not exist (expected '
                           f'{root}/{{split}}/{{class}}/*.jpg).')
    if not os.path.isdir(split_dir):
      raise UserInputError(f'{split_dir}: no such split folder; {root} has splits '
                           f'{subfolders(root) or "(none)"}.')
    classes = subfolders(split_dir)
    if not classes:
      raise UserInputError(f'{split_dir}: no class folders (expected {split_dir}/{{class}}/'
                           '*.jpg, one folder per class).')
    paths, labels = [], []
    for label, name in enumerate(classes):
      files = images_lib.list_images(os.path.join(split_dir, name))
      if not files:
        raise UserInputError(
            f'{os.path.join(split_dir, name)}: empty class folder (no '
            f'{"/".join(images_lib.IMAGE_EXTENSIONS)} files); remove it or add images.')
      paths += files
      labels += [label] * len(files)
    self.root, self.split, self.channels = root, split, channels
    self.class_names = tuple(classes)
    self.num_classes = len(classes)
    self.paths, self.labels = paths, np.asarray(labels, np.int32)
    self.skipped: list[str] = []
    if skip_bad_images:
      self._drop_unreadable()

  def _drop_unreadable(self) -> None:
    def readable(path):
      try:
        self._read(path)
        return True
      except (UserInputError, FileNotFoundError):  # a dangling symlink is unreadable too
        return False
    with concurrent.futures.ThreadPoolExecutor(max(4, os.cpu_count() or 1)) as pool:
      ok = list(pool.map(readable, self.paths))
    self.skipped = [p for p, good in zip(self.paths, ok) if not good]
    self.paths = [p for p, good in zip(self.paths, ok) if good]
    self.labels = self.labels[np.asarray(ok, bool)]
    if self.skipped:
      logging.warning('skip_bad_images: skipped %d unreadable files in %s/%s, e.g. %s',
                      len(self.skipped), self.root, self.split, self.skipped[:3])
    if not self.paths:
      raise UserInputError(f'{self.root}/{self.split}: none of the images is readable.')

  def _read(self, path: str) -> np.ndarray:
    return images_lib.read_image(path, mode='RGB' if self.channels == 3 else 'L')

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> dict[str, Any]:
    path = self.paths[index]
    try:
      image = self._read(path)
    except (UserInputError, FileNotFoundError) as e:
      raise UserInputError(f'{e} Set skip_bad_images=True to skip such files.') from None
    return {'image': image, 'label': self.labels[index]}

  def __repr__(self) -> str:
    return f'ImageFolderSource({self.root}/{self.split}, {len(self)} images, ' \
           f'{self.num_classes} classes)'


def _read_idx(path: str, expected_ndim: int) -> np.ndarray:
  """Reads a (gzipped) IDX file of unsigned bytes: magic 0x0000 08 NDIM, big-endian dims."""
  opener = gzip.open if path.endswith('.gz') else open
  try:
    with opener(path, 'rb') as f:
      data = f.read()
  except FileNotFoundError:
    raise FileNotFoundError(f'{path}: no such IDX file.') from None
  except (OSError, EOFError) as e:
    raise UserInputError(f'{path}: not a readable gzip/IDX file ({e}).') from None
  if len(data) < 4 or data[:2] != b'\0\0' or data[2] != 0x08:
    raise UserInputError(f'{path}: not an IDX file of unsigned bytes (magic '
                         f'{data[:4].hex()}; expected 000008{expected_ndim:02x}).')
  ndim = data[3]
  if ndim != expected_ndim:
    raise UserInputError(f'{path}: IDX file has {ndim} dimensions, expected {expected_ndim}.')
  if len(data) < 4 + 4 * ndim:
    raise UserInputError(f'{path}: IDX header is {len(data)} bytes, expected {4 + 4 * ndim} '
                         '(magic and sizes); the file is truncated or corrupt.')
  dims = struct.unpack(f'>{ndim}I', data[4:4 + 4 * ndim])
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(dims)):
    raise UserInputError(f'{path}: header says {dims} = {int(np.prod(dims))} bytes, file has '
                         f'{body.size}; the file is truncated or corrupt.')
  return body.reshape(dims)


class MnistIdxSource(ArraySource):
  """MNIST-style IDX files: `{prefix}-images-idx3-ubyte[.gz]`, `{prefix}-labels-idx1-ubyte[.gz]`.

  Images come out `[28, 28, 1]` uint8.
  """

  def __init__(self, images_path: str | os.PathLike, labels_path: str | os.PathLike):
    images_path, labels_path = os.fspath(images_path), os.fspath(labels_path)
    images = _read_idx(images_path, 3)
    labels = _read_idx(labels_path, 1)
    if len(images) != len(labels):
      raise UserInputError(f'{images_path} has {len(images)} images but {labels_path} has '
                           f'{len(labels)} labels.')
    if len(labels) and labels.max() > 9:  # else ArraySource's message names the images file
      raise UserInputError(f'{labels_path}: labels {int(labels.min())}..{int(labels.max())}; '
                           'expected MNIST digits 0..9.')
    super().__init__(images[..., None], labels, class_names=[str(i) for i in range(10)],
                     name=images_path)


def mnist_paths(directory: str | os.PathLike, split: str) -> tuple[str, str]:
  """The IDX image/label files of `split` ('train' or 'test' = 't10k') in `directory`."""
  prefix = {'train': 'train', 'test': 't10k', 't10k': 't10k'}.get(split)
  if prefix is None:
    raise UserInputError(f'MNIST split {split!r}: expected train or test.')
  out = []
  for kind, ndim in (('images', 3), ('labels', 1)):
    base = os.path.join(os.fspath(directory), f'{prefix}-{kind}-idx{ndim}-ubyte')
    candidates = [base + '.gz', base]
    found = next((c for c in candidates if os.path.exists(c)), None)
    if found is None:
      raise UserInputError(f'MNIST {split}: neither {candidates[0]} nor {candidates[1]} exists.')
    out.append(found)
  return out[0], out[1]


def _gist(error: Exception) -> str:
  """The first line of a TFDS error and its "Did you mean" hint: an unknown name's
  DatasetNotFoundError lists every TFDS dataset (some 260 lines), the hint last."""
  lines = str(error).strip().splitlines() or ['']
  hints = [line.strip() for line in lines[1:] if line.strip().startswith('Did you mean')]
  return ' '.join([lines[0].strip()] + hints)


class TfdsSource:
  """A prepared TFDS dataset read through `tfds.data_source` (array_record, no TensorFlow).

  Args:
    name: TFDS name, optionally with config/version ('cifar10', 'imagenet2012:5.1.0').
    split: a TFDS split string ('train', 'test', 'train[:90%]').
    data_dir: where the prepared dataset lives (`tfds_data_dir`); None = TFDS default.
    image_key, label_key: feature names of the image and the label.
  """

  def __init__(self, name: str, split: str, *, data_dir: str | None = None,
               image_key: str = 'image', label_key: str = 'label'):
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    where = data_dir or 'the default TFDS data_dir (~/tensorflow_datasets)'
    try:
      self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as e:  # pylint: disable=broad-except
      try:
        prepared = tfds.builder(name, data_dir=data_dir).is_prepared()
      except Exception as e2:  # pylint: disable=broad-except
        raise UserInputError(
            f'dataset {name!r}: not a TFDS dataset name nor an existing folder '
            f'({type(e2).__name__}: {_gist(e2)}).') from None
      if not prepared:
        raise UserInputError(
            f'TFDS dataset {name!r} is not prepared in {where}; prepare it there once with '
            f'`tfds build {name} --file_format=array_record` (nothing is downloaded at run '
            'time), or pass tfds_data_dir.') from None
      raise UserInputError(f'TFDS {name!r} split {split!r} in {where}: {e} (the dataset must '
                           'be prepared in array_record format).') from None
    features = self._source.dataset_info.features
    for key in (image_key, label_key):
      if key not in features:
        raise UserInputError(f'TFDS {name!r} has no feature {key!r}; features: '
                             f'{", ".join(features.keys())}.')
    if not hasattr(features[label_key], 'names'):  # e.g. a Scalar: no classes to number
      raise UserInputError(f'TFDS {name!r}: feature {label_key!r} is a '
                           f'{type(features[label_key]).__name__}; expected a ClassLabel '
                           '(class indices with names).')
    self.class_names = tuple(features[label_key].names)
    self.num_classes = len(self.class_names)
    self.image_key, self.label_key, self.name, self.split = image_key, label_key, name, split

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, index: int) -> dict[str, Any]:
    example = self._source[index]
    image = np.asarray(example[self.image_key], np.uint8)
    return {'image': image if image.ndim == 3 else image[..., None],
            'label': np.int32(example[self.label_key])}

  def __repr__(self) -> str:
    return f'TfdsSource({self.name}[{self.split}], {len(self)} examples)'


def get_source(dataset: str, split: str, *, data_dir: str | None = None,
               skip_bad_images: bool = False):
  """A source for `dataset`: image-folder path, MNIST IDX folder, or TFDS name.

  A path (containing a path separator, or an existing directory) is an image folder, unless
  it holds `*-idx3-ubyte[.gz]` files, which makes it an MNIST IDX folder.
  """
  is_path = os.sep in dataset or dataset.startswith('.') or os.path.isdir(dataset)
  if not is_path:
    return TfdsSource(dataset, split, data_dir=data_dir)
  if os.path.exists(dataset) and not os.path.isdir(dataset):  # e.g. an IDX file itself
    raise UserInputError(
        f'dataset {dataset} is a file; expected the folder holding the dataset: '
        f'{{split}}/{{class}}/ image folders, or MNIST IDX files (pass '
        f'{os.path.dirname(dataset) or "."} for the IDX files beside it).')
  if not os.path.isdir(dataset):
    raise UserInputError(f'dataset folder {dataset} does not exist.')
  if any('-idx3-ubyte' in f for f in os.listdir(dataset)):
    return MnistIdxSource(*mnist_paths(dataset, split))
  return ImageFolderSource(dataset, split, skip_bad_images=skip_bad_images)


def align_classes(source, class_names, *, what: str) -> None:
  """Renumbers `source.labels` in place from its own class order to `class_names`.

  An image folder numbers the sorted class folders of each split on its own, so a test split
  without one of the train classes would otherwise give the later classes other numbers
  than the model was trained with. Raises `UserInputError` for a class `class_names` lacks.
  """
  names, class_names = tuple(source.class_names), tuple(class_names)
  if names == class_names:
    return
  unknown = [n for n in names if n not in class_names]
  if unknown or not hasattr(source, 'labels'):
    raise UserInputError(
        f'{what}: classes {list(unknown or names)} are not among the model\'s '
        f'{len(class_names)} classes {list(class_names)[:20]}; the splits of an image folder '
        'must use the same class folder names.')
  index = {name: i for i, name in enumerate(class_names)}
  source.labels = np.asarray([index[n] for n in names], np.int32)[source.labels]
  source.class_names, source.num_classes = class_names, len(class_names)


def cache_in_memory(source, *, threads: int = 8) -> ArraySource:
  """Decodes every example once (threaded) into an `ArraySource`: for small datasets such as
  CIFAR, so that training epochs cost no decoding. Images must share one size."""
  with concurrent.futures.ThreadPoolExecutor(threads) as pool:
    records = list(pool.map(source.__getitem__, range(len(source))))
  shapes = {r['image'].shape for r in records}
  if len(shapes) > 1:
    raise UserInputError(f'cache_in_memory: {source!r} has images of several sizes '
                         f'{sorted(shapes)[:4]}; it caches only datasets of one size: '
                         'train with --config.cache_in_memory=False (decoded every epoch).')
  return ArraySource(np.stack([r['image'] for r in records]),
                     np.asarray([r['label'] for r in records]),
                     class_names=source.class_names, name=repr(source))
