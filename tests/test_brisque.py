"""BRISQUE against OpenCV's own `cv2.quality.QualityBRISQUE` and a libsvm copy of its model."""

import numpy as np
import pytest
from skimage import data

from vision_core.errors import UserInputError
from vit_jax.metrics import brisque_model
from vit_jax.metrics.brisque import brisque, brisque_features

cv2 = pytest.importorskip('cv2')
if not hasattr(cv2, 'quality'):
  pytest.skip('opencv-contrib (cv2.quality) is not installed', allow_module_level=True)

# Colour (even and odd sizes), grey (with large flat regions), RGBA.
IMAGES = ('astronaut', 'chelsea', 'page', 'logo')


def _paths(shared_data):
  d = shared_data / 'brisque'
  return str(d / 'brisque_model_live.yml'), str(d / 'brisque_range_live.yml')


def _image(name):
  im = getattr(data, name)()
  return im[..., None] if im.ndim == 2 else im


def _to_opencv(im):
  """Our RGB(A) [H, W, C] -> what OpenCV expects (BGR(A), or 2-D grey)."""
  if im.shape[-1] == 1:
    return np.ascontiguousarray(im[..., 0])
  order = [2, 1, 0, 3][:im.shape[-1]]
  return np.ascontiguousarray(im[..., order])


@pytest.fixture
def portable_opencv():
  """OpenCV without Intel IPP: its portable code path, the one we reproduce bit for bit."""
  before = cv2.ipp.useIPP()
  cv2.ipp.setUseIPP(False)
  yield cv2
  cv2.ipp.setUseIPP(before)


@pytest.mark.parametrize('name', IMAGES)
def test_matches_opencv_brisque(name, shared_data, portable_opencv):
  model, ranges = _paths(shared_data)
  im = _image(name)
  want = portable_opencv.quality.QualityBRISQUE_compute(_to_opencv(im), model, ranges)[0]
  got = brisque(im[None], model=model, range_file=ranges)
  assert got.shape == (1,)
  assert abs(got[0] - want) < 1e-3, (name, got[0], want)
  features = portable_opencv.quality.QualityBRISQUE_computeFeatures(_to_opencv(im))[0]
  np.testing.assert_allclose(brisque_features(im[None])[0], features, rtol=1e-4, atol=1e-6)


def test_opencv_exp_is_bit_exact(portable_opencv):
  import jax  # pylint: disable=g-import-not-at-top
  from vit_jax.metrics.opencv_float import opencv_exp  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(0).uniform(-80, 5, (1, 20000)).astype(np.float32)
  with jax.enable_x64(True):
    ours = np.asarray(jax.jit(opencv_exp)(x, np.int32(0)))
  np.testing.assert_array_equal(ours, portable_opencv.exp(x))


def test_close_to_opencv_with_ipp_on_photos(shared_data):
  """OpenCV's IPP build resizes and exponentiates with other rounding; photos stay close."""
  model, ranges = _paths(shared_data)
  im = _image('astronaut')
  want = cv2.quality.QualityBRISQUE_compute(_to_opencv(im), model, ranges)[0]
  assert abs(brisque(im[None], model, ranges)[0] - want) < 5e-3


def _small_batch():
  """3 grey 64x96 crops: one compiled shape shared by the tests below (each new image shape
  or dtype is a compilation of several seconds on a 2-core CPU)."""
  im = data.camera()[:64, :96, None]
  return np.stack([im, np.ascontiguousarray(im[::-1]), np.ascontiguousarray(im[:, ::-1])])


def test_batch_equals_single_images(shared_data):
  model, ranges = _paths(shared_data)
  batch = _small_batch()
  singles = [brisque(b[None], model, ranges)[0] for b in batch]
  np.testing.assert_allclose(brisque(batch, model, ranges), singles, rtol=0, atol=1e-9)


def test_threads_do_not_change_features():
  """Images scored concurrently (one compiled program per image) give the same bits as
  one at a time, in any batch."""
  batch = _small_batch()
  serial = brisque_features(batch, threads=1)
  np.testing.assert_array_equal(brisque_features(batch, threads=3), serial)
  np.testing.assert_array_equal(brisque_features(batch[::-1], threads=2), serial[::-1])
  np.testing.assert_array_equal(brisque_features(list(batch[1:2])), serial[1:2])


def test_features_on_a_jax_make_mesh_mesh():
  """A mesh from `jax.make_mesh` (Explicit axes by default) shards as ours does."""
  import jax  # pylint: disable=g-import-not-at-top
  batch = _small_batch()  # 3 images on a 4-device 'data' axis: padded.
  explicit = jax.make_mesh((4,), ('data',), axis_types=(jax.sharding.AxisType.Explicit,),
                           devices=jax.devices()[:4])
  np.testing.assert_array_equal(brisque_features(batch, mesh=explicit),
                                brisque_features(batch, threads=1))


def test_a_mesh_without_a_data_axis_is_named():
  import jax  # pylint: disable=g-import-not-at-top
  with pytest.raises(UserInputError, match=r"mesh axes \('batch',\): expected a 'data' axis"):
    brisque_features(_small_batch(), mesh=jax.make_mesh((8,), ('batch',)))  # was KeyError


def test_sharded_over_mesh_and_float_input_match(shared_data):
  from vision_core.mesh import make_mesh  # pylint: disable=g-import-not-at-top
  model, ranges = _paths(shared_data)
  batch = _small_batch()  # 3 images on an 8-device 'data' axis.
  plain = brisque(batch, model, ranges)
  # Float input in [0, 255] (grey: the same values) sharded over the mesh, padded to 8.
  sharded = brisque(batch.astype(np.float32), model, ranges, mesh=make_mesh())
  np.testing.assert_allclose(sharded, plain, rtol=0, atol=1e-9)


def _write_libsvm(path, svm):
  """Writes an OpenCV SVM as a libsvm text model (the format of svm-train's output)."""
  sv = svm.getSupportVectors()
  rho, alpha, index = svm.getDecisionFunction(0)
  alpha = alpha.ravel()
  lines = ['svm_type epsilon_svr', 'kernel_type rbf', f'gamma {svm.getGamma()!r}',
           'nr_class 2', f'total_sv {len(alpha)}', f'rho {rho!r}', 'SV']
  for a, row in zip(alpha, sv[index.ravel()]):
    entries = ' '.join(f'{i + 1}:{float(v)!r}' for i, v in enumerate(row) if v != 0)
    lines.append(f'{float(a)!r} {entries}')
  path.write_text('\n'.join(lines) + '\n')


def _write_svm_scale_range(path, ranges_yml):
  fs = cv2.FileStorage(ranges_yml, cv2.FILE_STORAGE_READ)
  table = fs.getNode('range').mat()
  lines = ['x', '-1 1'] + [f'{i + 1} {float(lo)!r} {float(hi)!r}'
                           for i, (lo, hi) in enumerate(zip(table[0], table[1]))]
  path.write_text('\n'.join(lines) + '\n')


def test_libsvm_model_gives_identical_scores(shared_data, tmp_path):
  model, ranges = _paths(shared_data)
  _write_libsvm(tmp_path / 'live.model', cv2.ml.SVM_load(model))
  _write_svm_scale_range(tmp_path / 'live.range', ranges)
  images = _small_batch()
  ours_cv = brisque(images, model, ranges)
  ours_libsvm = brisque(images, str(tmp_path / 'live.model'), str(tmp_path / 'live.range'))
  np.testing.assert_array_equal(ours_libsvm, ours_cv)
  # Mixed: libsvm model with OpenCV's range YAML.
  np.testing.assert_array_equal(brisque(images, str(tmp_path / 'live.model'), ranges), ours_cv)


def test_model_reader_matches_opencv(shared_data):
  model, ranges = _paths(shared_data)
  svr = brisque_model.load_model(model, ranges)
  svm = cv2.ml.SVM_load(model)
  rho, alpha, _ = svm.getDecisionFunction(0)
  np.testing.assert_array_equal(svr.support_vectors.astype(np.float32), svm.getSupportVectors())
  np.testing.assert_array_equal(svr.alpha, alpha.ravel())
  assert svr.rho == rho and svr.gamma == svm.getGamma()


def test_bad_input_is_rejected_clearly(shared_data, tmp_path):
  model, ranges = _paths(shared_data)
  with pytest.raises(UserInputError, match='channels'):
    brisque(np.zeros((1, 32, 32, 2), np.uint8), model, ranges)
  with pytest.raises(UserInputError, match='too small'):
    brisque(np.zeros((1, 10, 32, 3), np.uint8), model, ranges)
  with pytest.raises(UserInputError, match='NaN'):
    brisque(np.full((1, 32, 32, 1), np.nan, np.float32), model, ranges)
  with pytest.raises(UserInputError, match='batch'):
    brisque(np.zeros((32, 32, 3), np.uint8), model, ranges)
  with pytest.raises(UserInputError, match='model='):
    brisque(np.zeros((1, 32, 32, 3), np.uint8))
  bad = tmp_path / 'bad.yml'
  bad.write_text('%YAML:1.0\n---\nsomething: 1\n')
  with pytest.raises(UserInputError, match='bad.yml'):
    brisque(np.zeros((1, 32, 32, 3), np.uint8), str(bad), ranges)
  with pytest.raises(FileNotFoundError, match='missing.yml'):
    brisque(np.zeros((1, 32, 32, 3), np.uint8), str(tmp_path / 'missing.yml'), ranges)


def test_wider_integer_dtypes_need_8_bit_levels(shared_data, portable_opencv):
  model, ranges = _paths(shared_data)
  im = _image('astronaut')[:64, :96]
  want = portable_opencv.quality.QualityBRISQUE_compute(_to_opencv(im), model, ranges)[0]
  # int64 levels 0..255 are 8-bit images: OpenCV's score of the uint8 image.
  assert brisque(im[None].astype(np.int64), model, ranges)[0] == pytest.approx(want, abs=1e-3)
  # 16-bit RGB used to be clipped at 255 by the grey conversion and score 100 (OpenCV: ~29).
  with pytest.raises(UserInputError, match=r'0\.\.255, got values in .*dtype uint16'):
    brisque(im[None].astype(np.uint16) * 257, model, ranges)
  with pytest.raises(UserInputError, match='0..255'):
    brisque(im[None].astype(np.int16) - 1, model, ranges)
  with pytest.raises(UserInputError, match='empty batch'):
    brisque(np.zeros((0, 32, 32, 3), np.uint8), model, ranges)


def test_float_input_must_hold_0_255_values(shared_data, portable_opencv):
  model, ranges = _paths(shared_data)
  im = _image('astronaut')[:64, :96].astype(np.float32)
  want = portable_opencv.quality.QualityBRISQUE_compute(_to_opencv(im), model, ranges)[0]
  assert brisque(im[None], model, ranges)[0] == pytest.approx(want, abs=1e-3)
  # OpenCV scores [0, 1] floats silently, as if nearly black: 97 here against 34.
  unit = im / 255
  opencv_unit = portable_opencv.quality.QualityBRISQUE_compute(_to_opencv(unit), model, ranges)
  assert abs(opencv_unit[0] - want) > 50
  with pytest.raises(UserInputError, match=r'brisque images: image 1 \(float32\).*\[0, 1\]'):
    brisque(np.stack([im, unit]), model, ranges)
  with pytest.raises(UserInputError, match=r'image 0 .*\[-1, 1\].*\(x \+ 1\) \* 127\.5'):
    brisque(unit[None] * 2 - 1, model, ranges)
  with pytest.raises(UserInputError, match=r'image 0 .*\[0, 60909\], not 0\.\.255'):
    brisque(im[None] * 257, model, ranges)
  # uint8 is never second-guessed: a dark 8-bit image is a valid input (levels 0 and 1, on
  # either side of the crop's median, in the grey crops' compiled shape).
  dark = (_small_batch()[:1] > 202).astype(np.uint8)
  assert np.isfinite(brisque(dark, model, ranges)[0])


def test_bfloat16_input_is_scored_like_its_float32_values(shared_data, portable_opencv):
  """bfloat16 is a float dtype (numpy's np.floating does not know ml_dtypes' bf16, which once
  refused it as 'expected uint8 or float pixels'); its 0..255 levels are exact."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_dtypes  # pylint: disable=g-import-not-at-top
  model, ranges = _paths(shared_data)
  im = _image('astronaut')[:64, :96].astype(np.float32)
  want = portable_opencv.quality.QualityBRISQUE_compute(_to_opencv(im), model, ranges)[0]
  assert brisque(im[None].astype(ml_dtypes.bfloat16), model, ranges)[0] == pytest.approx(
      want, abs=1e-3)
  assert brisque(jnp.asarray(im[None], jnp.bfloat16), model, ranges)[0] == pytest.approx(
      want, abs=1e-3)
  with pytest.raises(UserInputError, match=r'image 0 \(bfloat16\).*\[0, 1\]'):
    brisque(im[None].astype(ml_dtypes.bfloat16) / 255, model, ranges)


def test_a_constant_image_scores_nan_where_opencv_gives_an_end_of_its_scale(shared_data):
  """A flat image has no statistics (its AGGD fits divide 0 by 0). OpenCV clamps what its
  SVM makes of that to [0, 100] and returns 0.0 (best) with Intel IPP, 100.0 (worst)
  without; ours is NaN, so that it passes for neither (docs/metrics.md). A nearly flat
  image scores as OpenCV's portable path does."""
  model, ranges = _paths(shared_data)
  # Grey, of _small_batch's shape: its compiled program serves this test too.
  flat = np.stack([np.full((64, 96, 1), v, np.uint8) for v in (0, 128, 255)])
  assert np.isnan(brisque(flat, model=model, range_file=ranges)).all()
  before = cv2.ipp.useIPP()
  try:
    for ipp, end in ((True, 0.0), (False, 100.0)):
      cv2.ipp.setUseIPP(ipp)
      assert [cv2.quality.QualityBRISQUE_compute(_to_opencv(im), model, ranges)[0]
              for im in flat] == [end] * 3, ipp
    nearly = flat[1].copy()
    nearly[10, 10] = 129
    want = cv2.quality.QualityBRISQUE_compute(_to_opencv(nearly), model, ranges)[0]
  finally:
    cv2.ipp.setUseIPP(before)
  assert abs(brisque(nearly[None], model=model, range_file=ranges)[0] - want) < 1e-2
