"""Inputs the core reads: image files of every sample depth, IDX headers, array sources."""

import os

import cv2
import numpy as np
import pytest
from PIL import Image

from vision_core import images
from vision_core.errors import UserInputError


@pytest.mark.parametrize('ext', ['png', 'tif', 'pgm'])
def test_16_bit_grey_images_are_scaled_like_opencv(tmp_path, ext):
  # Pillow opens these as 'I;16' (PNG, TIFF) or 'I' (PGM); its convert() clipped them at 255.
  rng = np.random.default_rng(0)
  samples = rng.integers(0, 65536, (12, 10), dtype=np.uint16)
  path = str(tmp_path / f'grey16.{ext}')
  assert cv2.imwrite(path, samples)
  grey = images.read_image(path, mode='L')
  rgb = images.read_image(path)
  np.testing.assert_array_equal(grey[..., 0], cv2.imread(path, cv2.IMREAD_GRAYSCALE))
  np.testing.assert_array_equal(rgb, cv2.imread(path, cv2.IMREAD_COLOR)[..., ::-1])
  rgba = images.read_image(path, mode='RGBA')
  np.testing.assert_array_equal(rgba[..., :3], rgb)
  assert (rgba[..., 3] == 255).all()


def test_8_bit_images_read_as_before(tmp_path):
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(tmp_path / 'rgb.png')
  np.testing.assert_array_equal(images.read_image(tmp_path / 'rgb.png'), pixels)
  Image.fromarray(pixels[..., 0]).save(tmp_path / 'grey.png')
  np.testing.assert_array_equal(images.read_image(tmp_path / 'grey.png', mode='L')[..., 0],
                                pixels[..., 0])


def test_float_and_32_bit_images_of_unknown_range_are_refused(tmp_path):
  whole = np.arange(30, dtype=np.float32).reshape(5, 6) * 8
  Image.fromarray(whole).save(tmp_path / 'whole.tif')
  np.testing.assert_array_equal(images.read_image(tmp_path / 'whole.tif', mode='L')[..., 0],
                                whole.astype(np.uint8))
  Image.fromarray(np.linspace(0, 1, 30, dtype=np.float32).reshape(5, 6)).save(
      tmp_path / 'unit.tif')
  with pytest.raises(UserInputError, match=r'unit\.tif: float samples in \[0\.0, 1\.0\]'):
    images.read_image(tmp_path / 'unit.tif')
  Image.fromarray(np.arange(30, dtype=np.int32).reshape(5, 6) * 1000).save(
      tmp_path / 'wide.tif')
  with pytest.raises(UserInputError, match=r'wide\.tif: 32-bit integer samples in \[0, 29000\]'):
    images.read_image(tmp_path / 'wide.tif')


def test_idx_file_cut_inside_its_header_is_named(tmp_path):
  from vision_core.data import sources  # pylint: disable=g-import-not-at-top
  path = tmp_path / 't10k-images-idx3-ubyte'
  path.write_bytes(b'\0\0\x08\x03' + (7).to_bytes(4, 'big'))  # two of three sizes missing
  with pytest.raises(UserInputError, match=r'idx3-ubyte: IDX header is 8 bytes, expected 16'):
    sources.MnistIdxSource(path, path)


@pytest.mark.parametrize('labels, message', [
    ([0, 1, 3, 2], r'labels: found 0\.\.3; expected class indices in \[0, 3\)'),
    ([0, -1, 1, 2], r'labels: found -1\.\.2; expected class indices in \[0, 3\)'),
    ([0.0, 1.7, 1.0, 2.0], r'labels: dtype float64 .*expected integer class indices'),
])
def test_array_source_refuses_labels_that_are_not_classes(labels, message):
  from vision_core.data import sources  # pylint: disable=g-import-not-at-top
  pixels = np.zeros((4, 2, 2, 3), np.uint8)
  with pytest.raises(UserInputError, match=message):
    sources.ArraySource(pixels, np.asarray(labels), class_names=['a', 'b', 'c'])
  whole = sources.ArraySource(pixels, np.asarray([0.0, 2.0, 1.0, 2.0]))
  assert whole.num_classes == 3 and whole.labels.dtype == np.int32


def test_array_source_refuses_float_images():
  from vision_core.data import sources  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserInputError, match=r'images: dtype float32; expected uint8'):
    sources.ArraySource(np.zeros((4, 2, 2, 3), np.float32), np.arange(4))


def _write_split(root, split, classes):
  for k, name in enumerate(classes):
    (root / split / name).mkdir(parents=True)
    for i in range(8):
      Image.fromarray(np.full((8, 8, 3), 30 * k + i, np.uint8)).save(
          root / split / name / f'{i}.png')


def test_align_classes_renumbers_a_split_to_the_train_classes(tmp_path):
  from vision_core import data  # pylint: disable=g-import-not-at-top
  _write_split(tmp_path, 'train', ['cat', 'dog', 'fox'])
  _write_split(tmp_path, 'test', ['cat', 'fox'])  # 'fox' is label 1 here, 2 in train
  train = data.ImageFolderSource(tmp_path, 'train')
  test = data.ImageFolderSource(tmp_path, 'test')
  assert test.labels.max() == 1  # why it is needed: the indices do not match
  data.align_classes(test, train.class_names, what='test split')
  by_folder = [train.class_names.index(os.path.basename(os.path.dirname(p)))
               for p in test.paths]
  np.testing.assert_array_equal(test.labels, by_folder)
  assert [test[i]['label'] for i in range(len(test))] == by_folder
  assert test.class_names == train.class_names and test.num_classes == 3
  _write_split(tmp_path, 'val', ['cat', 'emu'])
  with pytest.raises(UserInputError, match=r"val split: classes \['emu'\] are not among"):
    data.align_classes(data.ImageFolderSource(tmp_path, 'val'), train.class_names,
                       what='val split')


def test_igpt_probe_scores_a_test_split_lacking_a_class(tmp_path, capsys, monkeypatch):
  from igpt_jax import checkpoint, probe  # pylint: disable=g-import-not-at-top
  from tests.test_igpt_model import random_params, tiny_model  # pylint: disable=g-import-not-at-top
  _write_split(tmp_path / 'data', 'train', ['cat', 'dog', 'fox'])
  _write_split(tmp_path / 'data', 'test', ['cat', 'fox'])
  checkpoint.save(tmp_path / 'params.npz', random_params(tiny_model()))
  np.save(tmp_path / 'palette.npy', np.random.default_rng(0).uniform(
      -1, 1, (512, 3)).astype(np.float32))
  args = ['--params', str(tmp_path / 'params.npz'), '--palette', str(tmp_path / 'palette.npy'),
          '--dataset', str(tmp_path / 'data'), '--image_size', '4', '--steps', '5']
  sources = {}
  real_load_split = probe.load_split
  def load_split(dataset, split, *a, **k):
    sources[split] = k['source']
    return real_load_split(dataset, split, *a, **k)
  monkeypatch.setattr(probe, 'load_split', load_split)
  probe.main(args + ['--out', str(tmp_path / 'out')])
  assert sources['test'].class_names == ('cat', 'dog', 'fox')
  assert sorted(set(sources['test'].labels.tolist())) == [0, 2]  # cat, fox as in train
  assert (tmp_path / 'out' / 'probe.json').exists()
  os.rename(tmp_path / 'data' / 'test' / 'fox', tmp_path / 'data' / 'test' / 'emu')
  with pytest.raises(SystemExit) as e:
    probe.main(args + ['--out', str(tmp_path / 'out2')])
  assert e.value.code == 2
  assert "split test: classes ['emu'] are not among" in capsys.readouterr().err
  assert not (tmp_path / 'out2').exists()


@pytest.mark.parametrize('order', [('a', 'a/b'), ('a/b', 'a')])
def test_npz_array_and_group_of_one_name_is_an_error_in_any_order(order):
  from vision_core import npz  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserInputError, match=r"'a' is both an array and a group of arrays"):
    npz.unflatten({key: np.zeros(2) for key in order})


@pytest.mark.parametrize('spec, message', [
    ('resize([224])', r"'resize\(\[224\]\)': size \[224\]: expected a positive int"),
    ('resize("a")', r"'resize\(\"a\"\)': size 'a': expected a positive int"),
    ('resize(0)', r"'resize\(0\)': size 0: expected a positive int"),
    ('resize_small(-4)', r"'resize_small\(-4\)': size -4"),
    ('central_crop((8, 0))', r'size \(8, 0\): expected a positive int'),
    ('random_crop(8, pad=-2)', r'pad=-2: expected an int >= 0'),
    ('inception_crop(2.5)', r'size 2\.5: expected a positive int'),
])
def test_bad_preprocessing_arguments_are_named_when_parsed(spec, message):
  # These used to pass parsing and fail inside the loader's threads (PIL, numpy errors), or
  # give an IndexError; an empty crop even went through.
  from vision_core.data import preprocess  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserInputError, match=message):
    preprocess.parse(f'to_rgb|{spec}|value_range(-1, 1)')


def test_hidden_folders_and_files_are_no_classes_or_images(tmp_path):
  from vision_core.data import sources  # pylint: disable=g-import-not-at-top
  _write_split(tmp_path, 'train', ['cat', 'dog'])
  # Jupyter's checkpoint folder (holding a copy of an image) and macOS AppleDouble files.
  _write_split(tmp_path / 'train', '.ipynb_checkpoints', ['copies'])
  (tmp_path / 'train' / 'cat' / '._0.png').write_bytes(b'\0\5\26\7 AppleDouble metadata')
  source = sources.ImageFolderSource(tmp_path, 'train')
  assert source.class_names == ('cat', 'dog') and len(source) == 16
  assert source[8]['label'] == 1 and source[8]['image'][0, 0, 0] == 30  # dog/0.png
  assert images.list_images(tmp_path / 'train' / 'cat') == [
      str(tmp_path / 'train' / 'cat' / f'{i}.png') for i in range(8)]


def test_npz_loader_says_what_a_wrong_file_is(tmp_path):
  import zipfile  # pylint: disable=g-import-not-at-top
  from vision_core import npz  # pylint: disable=g-import-not-at-top
  (tmp_path / 'page.npz').write_text('<html>Not Found</html>')  # a failed download
  with pytest.raises(UserInputError, match=r"page\.npz: not a readable \.npz file \(it starts "
                     r"with b'<html>Not Found<'\)"):
    npz.load_flat(tmp_path / 'page.npz')
  (tmp_path / 'empty.npz').write_bytes(b'')
  with pytest.raises(UserInputError, match=r'empty\.npz: not a readable \.npz file \(it is '
                     r'empty\)'):
    npz.load_flat(tmp_path / 'empty.npz')
  with zipfile.ZipFile(tmp_path / 'model.pt', 'w') as z:  # PyTorch's checkpoint layout
    z.writestr('model/data.pkl', b'\x80\x02}q\x00.')
    z.writestr('model/data/0', np.zeros(3, np.float32).tobytes())
  with pytest.raises(UserInputError, match=r"model\.pt: a zip archive whose entry "
                     r"'model/data.pkl' is not a \.npy array"):
    npz.load_flat(tmp_path / 'model.pt')
  np.savez(tmp_path / 'good.npz', **{'a/b': np.arange(3), 'c': np.ones((2, 2))})
  loaded = npz.load_flat(tmp_path / 'good.npz')
  assert sorted(loaded) == ['a/b', 'c'] and loaded['a/b'].tolist() == [0, 1, 2]


def test_text_is_written_as_utf8_in_an_ascii_locale(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  path = tmp_path / 'report.md'
  script = ('from vision_core import io\n'
            f'with io.atomic_write({str(path)!r}, "w") as f:\n'
            '  f.write("5 \\u00d7 5 \\u2265 20\\n")\n')
  env = {**os.environ, 'LC_ALL': 'C', 'PYTHONUTF8': '0', 'PYTHONCOERCECLOCALE': '0'}
  result = subprocess.run([sys.executable, '-c', script], env=env, capture_output=True,
                          text=True, check=False, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert result.returncode == 0, result.stderr[-500:]
  assert path.read_bytes() == '5 \u00d7 5 \u2265 20\n'.encode('utf-8')


def test_image_past_pillows_pixel_limit_is_an_unreadable_image(tmp_path, monkeypatch):
  # Pillow refuses images of more than 2 x MAX_IMAGE_PIXELS (179 M pixels: a 200 MP phone
  # photo) with DecompressionBombError, which is no OSError: it was a traceback in predict
  # and stopped a training run even with skip_bad_images=True. The limit is lowered here.
  from vision_core import data  # pylint: disable=g-import-not-at-top
  from vit_jax import assess_io  # pylint: disable=g-import-not-at-top
  _write_split(tmp_path, 'train', ['cat', 'dog'])
  big = tmp_path / 'train' / 'dog' / 'huge.png'
  Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(big)
  monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 1000)  # 64 * 64 > 2 * 1000
  for read in (images.read_image, assess_io.read_for_metrics):
    with pytest.raises(UserInputError, match=r'huge\.png: not a readable image \(Image size '
                                             r'\(4096 pixels\) exceeds limit'):
      read(big)
  source = data.ImageFolderSource(tmp_path, 'train', skip_bad_images=True)
  assert source.skipped == [str(big)] and len(source) == 16


def test_cache_in_memory_of_mixed_sizes_names_the_setting_to_turn_off(tmp_path):
  from vision_core import data  # pylint: disable=g-import-not-at-top
  _write_split(tmp_path, 'train', ['cat', 'dog'])  # 8x8 images
  Image.fromarray(np.zeros((9, 8, 3), np.uint8)).save(tmp_path / 'train' / 'dog' / 'tall.png')
  with pytest.raises(UserInputError, match=r'several sizes \[\(8, 8, 3\), \(9, 8, 3\)\].*'
                                           r'--config\.cache_in_memory=False'):
    data.cache_in_memory(data.ImageFolderSource(tmp_path, 'train'))
