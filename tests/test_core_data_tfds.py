"""TFDS by name: array_record files written here (no TensorFlow), read by `get_source`."""

import io

import numpy as np
import pytest
from PIL import Image

from vision_core import data
from vision_core.errors import UserInputError

tfds = pytest.importorskip('tensorflow_datasets')


def _png(pixels: np.ndarray) -> bytes:
  # tfds encodes arrays with TensorFlow; encoded bytes need none.
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, 'PNG')
  return out.getvalue()


class CoreDataGreyToy(tfds.core.GeneratorBasedBuilder):
  """10 train and 7 test grey 6x5 images; example i is filled with 10 i, label i % 3."""
  VERSION = tfds.core.Version('1.0.0')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(6, 5, 1)),
        'label': tfds.features.ClassLabel(names=['cat', 'dog', 'emu'])}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(10), 'test': self._generate_examples(7)}

  def _generate_examples(self, n):
    for i in range(n):
      yield i, {'image': _png(np.full((6, 5), 10 * i, np.uint8)), 'label': i % 3}


class CoreDataScalarLabelToy(CoreDataGreyToy):
  """As CoreDataGreyToy, its label an int64 Scalar, not a ClassLabel."""

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Image(shape=(6, 5, 1)),
        'label': tfds.features.Scalar(dtype=np.int64)}))


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('tfds'))
  for builder in (CoreDataGreyToy, CoreDataScalarLabelToy):
    builder(data_dir=root, file_format='array_record').download_and_prepare()
  return root


def test_split_slices_label_names_and_grey_images(data_dir):
  source = data.get_source('core_data_grey_toy', 'train[:90%]', data_dir=data_dir)
  assert len(source) == 9 and source.class_names == ('cat', 'dog', 'emu')
  examples = [source[k] for k in range(len(source))]
  assert all(e['image'].shape == (6, 5, 1) and e['image'].dtype == np.uint8 for e in examples)
  ids = [int(e['image'][0, 0, 0]) // 10 for e in examples]
  assert all(int(e['label']) == i % 3 for e, i in zip(examples, ids))
  rest = data.get_source('core_data_grey_toy', 'train[90%:]', data_dir=data_dir)
  assert sorted(ids + [int(rest[0]['image'][0, 0, 0]) // 10]) == list(range(10))
  test = data.get_source('core_data_grey_toy', 'test', data_dir=data_dir)
  batches = list(data.eval_batches(test, global_batch_size=4, preprocess='to_rgb'))
  seen = np.concatenate([b['image'][b['mask'], 0, 0, 0] for b in batches])
  assert sorted(seen // 10) == list(range(7)) and batches[0]['image'].shape == (4, 6, 5, 3)


def test_unknown_split_and_unprepared_folder_are_named(data_dir, tmp_path):
  with pytest.raises(UserInputError, match=r"split 'validation'.*Unknown split"):
    data.get_source('core_data_grey_toy', 'validation', data_dir=data_dir)
  with pytest.raises(UserInputError, match=r'not prepared in .*tfds build core_data_grey_toy'):
    data.get_source('core_data_grey_toy', 'train', data_dir=str(tmp_path))


def test_misspelt_dataset_name_gives_a_short_message_with_the_hint(tmp_path):
  # The message held TFDS's list of every dataset it knows (some 260 lines), its
  # "Did you mean" hint last.
  with pytest.raises(UserInputError) as error:
    data.get_source('cifar_10', 'train', data_dir=str(tmp_path))
  message = str(error.value)
  assert "dataset 'cifar_10': not a TFDS dataset name nor an existing folder" in message
  assert 'Did you mean: cifar_10 -> cifar10' in message
  assert len(message.splitlines()) <= 2 and len(message) < 400, message


def test_a_label_that_is_no_class_label_is_named(data_dir):
  # It was "AttributeError: 'Scalar' object has no attribute 'names'".
  with pytest.raises(UserInputError, match=r"TFDS 'core_data_scalar_label_toy': feature "
                                           r"'label' is a Scalar; expected a ClassLabel"):
    data.get_source('core_data_scalar_label_toy', 'train', data_dir=data_dir)
