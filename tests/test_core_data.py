"""The shared input pipeline: sources, preprocessing, train/eval loaders (vision_core.data)."""

import gzip
import os
import struct
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vision_core import data
from vision_core.data import loader, preprocess
from vision_core.errors import UserInputError


def write_folder(root, split='train', classes=('a', 'b'), per_class=5, size=8, fmt='png'):
  """Writes `root/split/class/i.fmt` images; class k is filled with value 40 + 100 k."""
  rng = np.random.default_rng(0)
  for k, name in enumerate(classes):
    os.makedirs(root / split / name, exist_ok=True)
    for i in range(per_class):
      pixels = np.clip(40 + 100 * k + rng.integers(-5, 5, (size, size, 3)), 0, 255)
      Image.fromarray(pixels.astype(np.uint8)).save(root / split / name / f'{i}.{fmt}')
  return root


def test_image_folder_reads_classes_and_pixels(tmp_path):
  write_folder(tmp_path, per_class=3)
  source = data.get_source(str(tmp_path), 'train')
  assert source.class_names == ('a', 'b') and len(source) == 6
  example = source[4]
  expected = np.asarray(Image.open(tmp_path / 'train' / 'b' / '1.png'))
  np.testing.assert_array_equal(example['image'], expected)
  assert example['label'] == 1


def test_missing_dataset_and_split(tmp_path):
  with pytest.raises(UserInputError, match='does not exist'):
    data.get_source(str(tmp_path / 'nope'), 'train')
  write_folder(tmp_path)
  with pytest.raises(UserInputError, match=r"no such split folder.*\['train'\]"):
    data.get_source(str(tmp_path), 'test')


def test_empty_class_folder(tmp_path):
  write_folder(tmp_path)
  os.makedirs(tmp_path / 'train' / 'c')
  with pytest.raises(UserInputError, match=r'train/c: empty class folder'):
    data.ImageFolderSource(tmp_path, 'train')


def test_corrupt_image_named_or_skipped_and_counted(tmp_path):
  write_folder(tmp_path)
  bad = tmp_path / 'train' / 'a' / 'broken.jpg'
  bad.write_bytes(b'this is not a jpeg')
  source = data.ImageFolderSource(tmp_path, 'train')
  index = source.paths.index(str(bad))
  with pytest.raises(UserInputError, match=r'broken\.jpg: not a readable image'):
    source[index]
  loader = data.train_loader(source, global_batch_size=11, preprocess='', seed=0)
  with pytest.raises(Exception, match=r'broken\.jpg'):
    next(iter(loader))
  skipping = data.ImageFolderSource(tmp_path, 'train', skip_bad_images=True)
  assert skipping.skipped == [str(bad)] and len(skipping) == 10


def test_dangling_symlink_is_an_unreadable_image(tmp_path):
  # An image folder of links into a cache or another disk: a link whose target is gone
  # stopped the run with FileNotFoundError even with skip_bad_images=True.
  write_folder(tmp_path)
  link = tmp_path / 'train' / 'b' / 'gone.png'
  os.symlink(tmp_path / 'elsewhere' / 'gone.png', link)
  source = data.ImageFolderSource(tmp_path, 'train')
  with pytest.raises(UserInputError, match=r'gone\.png: no such image file\. Set '
                                           r'skip_bad_images=True to skip such files\.'):
    source[source.paths.index(str(link))]
  skipping = data.ImageFolderSource(tmp_path, 'train', skip_bad_images=True)
  assert skipping.skipped == [str(link)] and len(skipping) == 10
  assert str(link) not in skipping.paths
  assert list(skipping.labels) == [0] * 5 + [1] * 5


def test_mnist_idx_matches_written_arrays(tmp_path):
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, 7, dtype=np.uint8)
  with gzip.open(tmp_path / 't10k-images-idx3-ubyte.gz', 'wb') as f:
    f.write(struct.pack('>IIII', 0x803, 7, 28, 28) + images.tobytes())
  with gzip.open(tmp_path / 't10k-labels-idx1-ubyte.gz', 'wb') as f:
    f.write(struct.pack('>II', 0x801, 7) + labels.tobytes())
  source = data.get_source(str(tmp_path), 'test')
  assert len(source) == 7
  np.testing.assert_array_equal(source[3]['image'][..., 0], images[3])
  assert source[3]['label'] == labels[3]
  with gzip.open(tmp_path / 't10k-labels-idx1-ubyte.gz', 'wb') as f:
    f.write(struct.pack('>II', 0x801, 9) + labels.tobytes())
  with pytest.raises(UserInputError, match='truncated'):
    data.get_source(str(tmp_path), 'test')


def test_real_mnist_test_set(shared_data):
  source = data.get_source(str(shared_data / 'mnist'), 'test')
  assert len(source) == 10000 and source[0]['image'].shape == (28, 28, 1)
  assert np.bincount(source.labels).min() > 800  # every digit present


def test_missing_tfds_dataset_is_clear(tmp_path):
  with pytest.raises(UserInputError, match='not prepared'):
    data.get_source('mnist', 'test', data_dir=str(tmp_path))


def test_preprocess_ops():
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
  record = {'image': image, 'label': 3}
  out = data.parse_preprocess('value_range(-1, 1)')(record)
  np.testing.assert_allclose(out['image'], (image.astype(np.float64) - 127.5) / 127.5,
                             atol=1e-6)
  out = data.parse_preprocess('central_crop(10)')(record)['image']
  np.testing.assert_array_equal(out, image[5:15, 10:20])
  out = data.parse_preprocess('resize_small(10)')(record)['image']
  assert out.shape == (10, 15, 3)
  for seed in range(5):
    crop = data.parse_preprocess('inception_crop(12)|flip_lr')(
        record, np.random.default_rng(seed))['image']
    assert crop.shape == (12, 12, 3) and crop.dtype == np.uint8
  padded = data.parse_preprocess('random_crop(20, pad=4)')(
      {'image': image[:20, :20]}, np.random.default_rng(3))['image']
  assert padded.shape == (20, 20, 3)
  # Padding by 4 and cropping at the top-left corner: the rows/columns 4..1 mirrored.
  class Corner:
    def integers(self, low, high):
      return low
  corner = data.parse_preprocess('random_crop(8, pad=4, mode="reflect")')(
      {'image': image[:8, :8]}, Corner())['image']
  np.testing.assert_array_equal(corner[4:, 4:], image[:4, :4])
  np.testing.assert_array_equal(corner[:4, 4:], image[4:0:-1, :4])
  zeros = data.parse_preprocess('random_crop(8, pad=4)')({'image': image[:8, :8]}, Corner())
  assert not zeros['image'][:4].any()
  with pytest.raises(UserInputError, match=r"random_crop.*mode.*: expected constant, reflect "
                     r"or edge\.$"):  # one full stop, not the op's and the wrapper's
    data.parse_preprocess('random_crop(8, pad=4, mode="wrap")')
  with pytest.raises(UserInputError, match='unknown preprocessing op .*known ops'):
    data.parse_preprocess('rezise(3)')
  assert 'inception_crop' in preprocess.known_ops()


def test_resize_matches_pil_bilinear():
  image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
  out = data.parse_preprocess('resize(8)')({'image': image})['image']
  expected = np.asarray(Image.fromarray(image).resize((8, 8), Image.BILINEAR))
  np.testing.assert_array_equal(out, expected)


def _arrays(n, size=4):
  images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones((1, size, size, 3),
                                                                       np.uint8)
  return data.ArraySource(images, np.arange(n) % 3)


def test_eval_covers_every_example_once():
  source = _arrays(23)
  seen = []
  batches = list(data.eval_batches(source, global_batch_size=8, preprocess=''))
  assert len(batches) == data.num_eval_batches(23, 8) == 3
  for batch in batches:
    assert batch['image'].shape == (8, 4, 4, 3) and batch['mask'].shape == (8,)
    seen += list(batch['image'][batch['mask'], 0, 0, 0])
  assert sorted(seen) == list(range(23))
  assert batches[-1]['mask'].sum() == 7


def test_train_loader_resumes_exactly_and_drops_remainder():
  source = _arrays(30)
  loader = data.train_loader(source, global_batch_size=8, preprocess='flip_lr', seed=3)
  it = iter(loader)
  first = [next(it)['image'][:, 0, 0, 0] for _ in range(3)]
  state = it.get_state()
  after = [next(it)['image'][:, 0, 0, 0] for _ in range(4)]
  resumed = iter(loader)
  resumed.set_state(state)
  np.testing.assert_array_equal([next(resumed)['image'][:, 0, 0, 0] for _ in range(4)], after)
  # An epoch is 3 full batches (24 of 30): shuffled, no example twice within it.
  epoch = np.concatenate(first)
  assert len(set(epoch.tolist())) == 24
  again = iter(data.train_loader(source, global_batch_size=8, preprocess='flip_lr', seed=3))
  np.testing.assert_array_equal(next(again)['image'][:, 0, 0, 0], first[0])


def test_global_batches_do_not_depend_on_the_number_of_processes():
  """Process p of P feeds rows [p b, (p + 1) b) of every global batch: the P samplers' records
  (and augmentation generators), concatenated in process order, are those of one process.
  One process reads epoch e in grain's shuffle with seed `shuffle_seed(seed, e)`, and record
  g with the generator `augmentation_rng(seed, g)`."""
  import grain.python as grain  # pylint: disable=g-import-not-at-top
  n, b, procs = 37, 2, 3
  one = data.GlobalBatchSampler(n, per_process_batch=procs * b, seed=5)
  def draws(meta):
    return meta.record_key, meta.rng.integers(1 << 30)
  global_stream = [draws(one[i]) for i in range(200)]  # 5 epochs, reshuffled each
  orders = [grain.MapDataset.range(n).shuffle(seed=loader.shuffle_seed(5, e)) for e in range(6)]
  assert global_stream == [(orders[g // n][g % n],
                            loader.augmentation_rng(5, g).integers(1 << 30)) for g in range(200)]
  assert sorted(k for k, _ in global_stream[:n]) == list(range(n))
  assert [k for k, _ in global_stream[:n]] != [k for k, _ in global_stream[n:2 * n]]
  samplers = [data.GlobalBatchSampler(n, per_process_batch=b, seed=5, process_index=p,
                                      process_count=procs) for p in range(procs)]
  fed = []
  for batch in range(200 // (procs * b)):
    for p, sampler in enumerate(samplers):
      # The grain DataLoader asks process p for indices j * procs + p, j counting its records.
      fed += [draws(sampler[(batch * b + row) * procs + p]) for row in range(b)]
  assert fed == global_stream[:len(fed)]


def test_grain_workers_do_not_change_the_batches():
  """Each grain worker batches its own records; the sampler maps them so that the batches
  (and a resume from a worker run's state) are those of a run without workers."""
  source = _arrays(40)
  plain = iter(data.train_loader(source, global_batch_size=8, preprocess='flip_lr', seed=3))
  workers = iter(data.train_loader(source, global_batch_size=8, preprocess='flip_lr', seed=3,
                                   worker_count=2))
  for _ in range(5):  # into the second epoch
    np.testing.assert_array_equal(next(workers)['image'], next(plain)['image'])
  resumed = iter(data.train_loader(source, global_batch_size=8, preprocess='flip_lr', seed=3,
                                   worker_count=2))
  resumed.set_state(workers.get_state())
  np.testing.assert_array_equal(next(resumed)['image'], next(plain)['image'])
  batches = list(data.eval_batches(source, global_batch_size=6, preprocess='', worker_count=3))
  assert len(batches) == data.num_eval_batches(40, 6) == 7
  seen = np.concatenate([b['image'][b['mask'], 0, 0, 0] for b in batches])
  np.testing.assert_array_equal(seen, np.arange(40))


@pytest.mark.parametrize('workers, positions', [(0, (0, 4, 7)), (3, (5,))])
def test_seek_is_the_state_after_reading_that_many_batches(workers, positions):
  """`data.seek` (resuming with another process count) writes grain's own state."""
  loader = data.train_loader(_arrays(40), global_batch_size=8, preprocess='flip_lr', seed=3,
                             worker_count=workers)
  for batches in positions:
    read, sought = iter(loader), iter(loader)
    for _ in range(batches):
      next(read)
    data.seek(sought, batches=batches, global_batch_size=8)
    assert sought.get_state() == read.get_state()
    np.testing.assert_array_equal(next(sought)['image'], next(read)['image'])


def test_eval_sampler_pads_the_last_global_batch():
  samplers = [data.GlobalBatchSampler(11, per_process_batch=2, seed=None, process_index=p,
                                      process_count=3, num_epochs=1, pad_last=True)
              for p in range(3)]
  assert [len(s) for s in samplers] == [12] * 3  # two global batches of 6 per process x 3
  keys, masks = [], []
  for batch in range(2):
    for p, sampler in enumerate(samplers):
      keys += [sampler[(batch * 2 + row) * 3 + p].record_key for row in range(2)]
      masks += list(sampler.positions(batch) < 11)
  assert keys == list(range(11)) + [0] and masks == [True] * 11 + [False]


def test_batch_too_large_and_mixed_sizes(tmp_path):
  with pytest.raises(UserInputError, match=r'has 5 examples, fewer than one batch: batch=8\. '
                     r'Lower batch \(or add examples\)'):
    data.train_loader(_arrays(5), global_batch_size=8, preprocess='', seed=0,
                      batch_field='batch')
  with pytest.raises(UserInputError, match=r'^global_batch_size=0 must be a positive multiple'):
    data.train_loader(_arrays(5), global_batch_size=0, preprocess='', seed=0)
  write_folder(tmp_path, classes=('a',), per_class=2, size=8)
  Image.fromarray(np.zeros((9, 9, 3), np.uint8)).save(tmp_path / 'train' / 'a' / 'z.png')
  source = data.ImageFolderSource(tmp_path, 'train')
  with pytest.raises(Exception, match='different shapes'):
    list(data.eval_batches(source, global_batch_size=3, preprocess=''))


def test_tfds_source_reads_through_data_source():
  """tfds' own mock (random examples from the dataset's feature spec, served through
  `tfds.data_source`) stands in for prepared array_record files."""
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=12):
    source = data.get_source('cifar10', 'train')
    assert len(source) == 12 and source.num_classes == 10
    example = source[3]
    assert example['image'].shape == (32, 32, 3) and example['image'].dtype == np.uint8
    assert 0 <= int(example['label']) < 10
    batch = next(iter(data.train_loader(source, global_batch_size=4,
                                        preprocess='flip_lr|value_range(-1, 1)', seed=0)))
    assert batch['image'].shape == (4, 32, 32, 3) and batch['label'].shape == (4,)


def test_real_cifar10_folder(shared_data):
  source = data.get_source(str(shared_data / 'cifar10'), 'test')
  assert len(source) == 10000 and source.num_classes == 10
  assert np.bincount(source.labels).tolist() == [1000] * 10
  assert source[0]['image'].shape == (32, 32, 3)
  assert data.num_eval_batches(len(source), 512) == 20  # 19 full + 1 padded: all 10,000 scored


def test_a_process_that_exits_after_its_last_eval_batch_leaks_no_shared_memory(tmp_path):
  """With grain workers, the batches' shared memory is unlinked in a background thread; a
  script that ended right after an eval left unlinks undone, and Python's resource tracker
  warned about "leaked shared_memory objects" at exit."""
  write_folder(tmp_path, split='test', per_class=7)
  script = tmp_path / 'eval_then_exit.py'
  script.write_text(
      'from vision_core import data\n'
      'if __name__ == "__main__":  # grain workers are spawned: they import this file\n'
      f'  source = data.get_source({str(tmp_path)!r}, "test")\n'
      '  batches = data.eval_batches(source, global_batch_size=8, preprocess="",\n'
      '                              worker_count=2)\n'
      '  print(sum(int(b["mask"].sum()) for b in batches))\n')
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          env={**os.environ, 'PYTHONPATH': root}, timeout=300, check=True)
  assert result.stdout.split() == ['14']
  assert 'leaked shared_memory' not in result.stderr, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr, result.stderr[-2000:]
